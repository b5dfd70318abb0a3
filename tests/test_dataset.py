"""Tests for train.dataset: collecting, reporting, zip ingest and resumable RVC-style slicing."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from infer.audio import load_audio
from infer.errors import Cancelled, UnsafeFileError
from tests.helpers import EDGE_DIR, VOICES_DIR
from train.dataset import (
    DatasetError,
    DatasetFile,
    DatasetLimits,
    DatasetManifest,
    SkippedFile,
    build_report,
    collect_dataset,
    load_manifest,
    prepare_dataset,
)
from train.slicing import SliceConfig, preprocess_audio

SPEECH = ["001.flac", "002.flac", "024.flac"]


def _durations() -> dict[str, float]:
    with open(VOICES_DIR / "manifest.tsv", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {row["path"]: float(row["duration_s"]) for row in rows if row["duration_s"] != "-"}


@pytest.fixture
def speech_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "voice"
    (folder / "more").mkdir(parents=True)
    shutil.copy(VOICES_DIR / "us1" / "speech" / SPEECH[0], folder / SPEECH[0])
    shutil.copy(VOICES_DIR / "us1" / "speech" / SPEECH[1], folder / SPEECH[1])
    shutil.copy(VOICES_DIR / "us1" / "speech" / SPEECH[2], folder / "more" / SPEECH[2])
    return folder


def test_collect_folder_skips_edge_files_with_reasons(speech_dir: Path, tmp_path: Path) -> None:
    shutil.copy(EDGE_DIR / "empty_0_bytes.wav", speech_dir / "empty_0_bytes.wav")
    shutil.copy(EDGE_DIR / "not_really.mp3", speech_dir / "more" / "not_really.mp3")
    (speech_dir / "notes.txt").write_text("transcripts")
    (speech_dir / ".hidden.wav").write_bytes(b"ignored")
    work = tmp_path / "work"
    calls: list[float] = []
    manifest = collect_dataset(speech_dir, work, progress=lambda f, _m: calls.append(f))

    expected = _durations()
    assert [f.path.name for f in manifest.files] == ["001.flac", "002.flac", "024.flac"]
    for f in manifest.files:
        assert f.duration_s == pytest.approx(expected[f"us1/speech/{f.path.name}"], abs=2e-3)
        assert f.sample_rate == 16000 and f.clipped_share == 0.0 and not f.looks_like_noise
        assert f.size_bytes == f.path.stat().st_size and 0.0 < f.silent_share < 0.5
    rep = manifest.report
    assert rep.clip_count == 3
    assert rep.duration_s == pytest.approx(sum(expected[f"us1/speech/{n}"] for n in SPEECH), abs=5e-3)
    assert 0.6 * rep.duration_s < rep.usable_duration_s < rep.duration_s
    assert rep.sample_rates == (16000,) and rep.clipped_share == 0.0
    codes = {Path(s.path).name: s.code for s in rep.skipped}
    assert codes == {
        "empty_0_bytes.wav": "empty",
        "not_really.mp3": "not_audio",
        "notes.txt": "unsupported_type",
    }
    reasons = {Path(s.path).name: s.reason for s in rep.skipped}
    assert "empty" in reasons["empty_0_bytes.wav"] and "decode" in reasons["not_really.mp3"]
    assert any(w.startswith("less than 1 minute of usable audio") for w in rep.warnings)
    assert any("2 file(s) could not be used" in w for w in rep.warnings)
    assert calls[0] == 0.0 and calls[-1] == 1.0

    # JSON-serialisable, written to the work folder, and read back equal.
    text = json.dumps(rep.to_dict())
    assert json.loads(text)["clip_count"] == 3
    assert load_manifest(work) == manifest


def test_collect_file_list_with_edge_cases(tmp_path: Path) -> None:
    sources = [
        EDGE_DIR / "clipped_overdriven.flac",
        EDGE_DIR / "stereo_44k.wav",
        EDGE_DIR / "silence_10s.wav",
        EDGE_DIR / "truncated.flac",
        EDGE_DIR / "garbage_payload.wav",
        tmp_path / "missing.wav",
    ]
    manifest = collect_dataset(sources, tmp_path / "work")
    by_name = {f.path.name: f for f in manifest.files}
    assert set(by_name) == {
        "clipped_overdriven.flac",
        "stereo_44k.wav",
        "truncated.flac",
        "garbage_payload.wav",
    }
    assert by_name["clipped_overdriven.flac"].clipped_share == pytest.approx(0.302, abs=0.01)
    assert by_name["stereo_44k.wav"].sample_rate == 44100
    assert by_name["truncated.flac"].is_truncated and 1.0 < by_name["truncated.flac"].duration_s < 1.5
    assert by_name["garbage_payload.wav"].looks_like_noise
    codes = {Path(s.path).name: s.code for s in manifest.report.skipped}
    assert codes == {"silence_10s.wav": "silent", "missing.wav": "not_found"}
    warnings = "\n".join(manifest.report.warnings)
    assert "% of samples are clipped" in warnings
    assert "multiple sample rates: 16000, 44100 Hz" in warnings
    assert "garbage_payload.wav" in warnings and "truncated.flac" in warnings


def _file(
    name: str, duration: float, rate: int | None, clipped: float = 0.0, silent: float = 0.0
) -> DatasetFile:
    return DatasetFile(Path(name), 1, 1, rate, duration, clipped, silent, looks_like_noise=False)


def test_build_report_weights_and_warnings() -> None:
    files = [_file("a.wav", 40.0, 48000, clipped=0.01, silent=0.25), _file("b.mp3", 60.0, None, silent=0.6)]
    rep = build_report(files, [SkippedFile("c.txt", "not audio", "unsupported_type")])
    assert rep.duration_s == 100.0
    assert rep.usable_duration_s == pytest.approx(40 * 0.75 + 60 * 0.4)
    assert rep.clipped_share == pytest.approx(0.004)
    assert rep.silent_share == pytest.approx(0.46)
    assert rep.sample_rates == (48000,)
    assert rep.warnings == (
        "less than 1 minute of usable audio (54.0 s): expect a weak model; "
        "10 minutes or more of clean speech or singing works best",
        "0.4% of samples are clipped: the model will learn the distortion; "
        "use recordings made at a lower level",
    )
    long_clean = build_report([_file("a.wav", 700.0, 40000), _file("b.wav", 30.0, 16000)], [])
    assert (
        long_clean.warnings[0]
        == "multiple sample rates: 16000, 40000 Hz; all are resampled to the model rate"
    )
    assert "low sample rate (16000 Hz)" in long_clean.warnings[1] and len(long_clean.warnings) == 2
    assert build_report([], []).warnings == (
        "no usable audio: every file was skipped (see the skipped list)",
    )


def test_collect_zip_extracts_safely_and_reuses_extraction(tmp_path: Path) -> None:
    zip_path = tmp_path / "takes.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.write(VOICES_DIR / "us1" / "speech" / "001.flac", "takes/001.flac")
        zf.write(EDGE_DIR / "real_speech.mp3", "takes/real_speech.mp3")
        zf.writestr("takes/readme.txt", "hello")
        zf.writestr("__MACOSX/takes/._001.flac", "junk")
    work = tmp_path / "work"
    manifest = collect_dataset(zip_path, work)
    assert [f.path.relative_to(work).as_posix() for f in manifest.files] == [
        "extracted/000_takes/takes/001.flac",
        "extracted/000_takes/takes/real_speech.mp3",
    ]
    assert {f.path.name: f.sample_rate for f in manifest.files} == {
        "001.flac": 16000,
        "real_speech.mp3": 16000,
    }
    assert {s.path: s.code for s in manifest.report.skipped} == {
        "takes.zip:takes/readme.txt": "unsupported_type",
        "takes.zip:__MACOSX/takes/._001.flac": "unsupported_type",
    }
    inode = manifest.files[0].path.stat().st_ino
    again = collect_dataset(zip_path, work)
    assert again.files == manifest.files and again.files[0].path.stat().st_ino == inode

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.wav", b"RIFF")
    with pytest.raises(UnsafeFileError, match=r"'\.\.'"):
        collect_dataset(evil, tmp_path / "work2")
    assert not (tmp_path / "escape.wav").exists()


def test_collect_limits(speech_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="3 audio files, more than the limit of 2"):
        collect_dataset(speech_dir, tmp_path / "w1", limits=DatasetLimits(max_files=2))
    with pytest.raises(DatasetError, match="more than the limit of 1000"):
        collect_dataset(speech_dir, tmp_path / "w2", limits=DatasetLimits(max_total_bytes=1000))
    manifest = collect_dataset(speech_dir, tmp_path / "w3", limits=DatasetLimits(max_file_bytes=60_000))
    assert [f.path.name for f in manifest.files] == ["001.flac", "002.flac"]
    assert [s.code for s in manifest.report.skipped] == ["too_large"]
    with pytest.raises(DatasetError, match="does not exist"):
        collect_dataset(tmp_path / "nowhere", tmp_path / "w4")
    with pytest.raises(ValueError, match="unknown dataset limit keys"):
        DatasetLimits.from_dict({"max_gb": 2})


def _read(path: Path) -> tuple[np.ndarray, int, str]:
    data, rate = soundfile.read(path, dtype="float32")
    return data, rate, soundfile.info(str(path)).subtype


def test_prepare_writes_rvc_folders_and_resumes(speech_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    manifest = collect_dataset(speech_dir, work)
    config = SliceConfig(mode="fixed")
    result = prepare_dataset(manifest, work, sample_rate=40000, config=config)
    # 001 and 002 are shorter than 4 s (one segment each); 024 is 4.15 s (two segments).
    assert result.segment_names == ("0_0.wav", "1_0.wav", "2_0.wav", "2_1.wav")
    assert (result.files_processed, result.files_reused, result.skipped) == (3, 0, ())
    assert result.gt_wavs_dir == work / "0_gt_wavs" and result.wavs_16k_dir == work / "1_16k_wavs"
    assert sorted(p.name for p in result.gt_wavs_dir.iterdir()) == list(result.segment_names)
    assert sorted(p.name for p in result.wavs_16k_dir.iterdir()) == list(result.segment_names)

    source = manifest.files[2].path
    expected = preprocess_audio(load_audio(source, 40000), 40000, config)
    assert len(expected) == 2
    for number, segment in enumerate(expected):
        gt, gt_rate, subtype = _read(result.gt_wavs_dir / f"2_{number}.wav")
        k16, k16_rate, _ = _read(result.wavs_16k_dir / f"2_{number}.wav")
        assert (gt_rate, k16_rate, subtype) == (40000, 16000, "FLOAT")
        np.testing.assert_array_equal(gt, segment.audio)
        np.testing.assert_array_equal(k16, segment.audio_16k)
    assert result.duration_s == pytest.approx(sum(f.duration_s for f in manifest.files) + 0.3, abs=0.01)

    stamps = {p.name: p.stat().st_mtime_ns for p in result.gt_wavs_dir.iterdir()}
    again = prepare_dataset(manifest, work, sample_rate=40000, config=config)
    assert (again.files_processed, again.files_reused) == (0, 3)
    assert again.segment_names == result.segment_names
    assert {p.name: p.stat().st_mtime_ns for p in result.gt_wavs_dir.iterdir()} == stamps

    # A changed source is redone; the others are kept.
    changed = manifest.files[1].path
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = prepare_dataset(manifest, work, sample_rate=40000, config=config)
    assert (third.files_processed, third.files_reused) == (1, 2)
    assert (result.gt_wavs_dir / "0_0.wav").stat().st_mtime_ns == stamps["0_0.wav"]

    # A file dropped from the dataset loses its segments; indices of the others stay.
    smaller = dataclasses.replace(manifest, files=manifest.files[1:])
    fourth = prepare_dataset(smaller, work, sample_rate=40000, config=config)
    assert fourth.segment_names == ("1_0.wav", "2_0.wav", "2_1.wav") and fourth.files_reused == 2
    assert not (result.gt_wavs_dir / "0_0.wav").exists() and not (result.wavs_16k_dir / "0_0.wav").exists()

    # Other settings redo everything.
    fifth = prepare_dataset(smaller, work, sample_rate=40000, config=SliceConfig(mode="off"))
    assert (fifth.files_processed, fifth.files_reused) == (2, 0)
    assert fifth.segment_names == ("0_0.wav", "1_0.wav")
    state = json.loads((work / "prepare_state.json").read_text())
    assert state["slice_config"]["mode"] == "off" and state["sample_rate"] == 40000


def test_prepare_stop_then_resume_and_vanished_file(speech_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    manifest = collect_dataset(speech_dir, work)
    checks = iter([False, True])
    with pytest.raises(Cancelled):
        prepare_dataset(manifest, work, sample_rate=32000, should_stop=lambda: next(checks, True))
    state = json.loads((work / "prepare_state.json").read_text())
    assert [e["status"] for e in state["files"].values()] == ["done", "pending", "pending"]
    manifest.files[2].path.unlink()
    result = prepare_dataset(manifest, work, sample_rate=32000)
    assert (result.files_processed, result.files_reused) == (2, 1)
    assert result.segment_names == ("0_0.wav", "1_0.wav")
    assert [(Path(s.path).name, s.code) for s in result.skipped] == [("024.flac", "not_found")]


def test_prepare_with_two_workers_matches_one(speech_dir: Path, tmp_path: Path) -> None:
    manifest = collect_dataset(speech_dir, tmp_path / "one")
    serial = prepare_dataset(manifest, tmp_path / "one", sample_rate=40000)
    parallel_manifest = DatasetManifest(manifest.files, manifest.report, tmp_path / "two")
    parallel = prepare_dataset(parallel_manifest, tmp_path / "two", sample_rate=40000, workers=2)
    assert parallel.segment_names == serial.segment_names and parallel.files_processed == 3
    # libsndfile stamps the time into float WAV headers, so compare the samples.
    for name in serial.segment_names:
        for folder in ("0_gt_wavs", "1_16k_wavs"):
            one, rate_one, _ = _read(tmp_path / "one" / folder / name)
            two, rate_two, _ = _read(tmp_path / "two" / folder / name)
            assert rate_one == rate_two and np.array_equal(one, two) and one.size > 10_000


def test_work_folder_inside_the_source_is_ignored(speech_dir: Path) -> None:
    work = speech_dir / "work"
    (speech_dir / "broken.wav").symlink_to(speech_dir / "no_such_file.wav")
    manifest = collect_dataset(speech_dir, work)
    prepare_dataset(manifest, work, sample_rate=32000, config=SliceConfig(mode="off"))
    assert len(list((work / "0_gt_wavs").iterdir())) == 3
    again = collect_dataset(speech_dir, work)
    assert [f.path.name for f in again.files] == ["001.flac", "002.flac", "024.flac"]
    assert [(Path(s.path).name, s.code) for s in again.report.skipped] == [("broken.wav", "not_found")]
