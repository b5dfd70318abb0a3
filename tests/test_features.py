"""Training features: files, shapes and values; resume, change detection, cancel, failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from infer.audio import resample
from infer.content import HubertEncoder, register_content_encoder
from infer.content.hubert import build_hubert, read_hubert_checkpoint
from infer.errors import AssetError, Cancelled
from infer.pitch import PitchMethodUnavailable, f0_to_coarse, get_pitch_extractor
from tests.helpers import HUBERT_FIXTURES, VOICES_DIR
from train.features import (
    F0_COARSE_DIRNAME,
    F0_HZ_DIRNAME,
    FEATURE_STATE_FILENAME,
    FeatureError,
    extract_features,
    feature_dir,
    list_training_examples,
    load_training_features,
)

TINY_HUBERT = HUBERT_FIXTURES / "tiny_hubert_fairseq_layout.pt"
TINY_NAME = "tiny-hubert-features-test"
# Lengths (16 kHz samples) of the test segments; varied to check every frame count.
SEGMENT_SAMPLES = (16000, 19237, 12345, 20000, 8123)
GT_SAMPLE_RATE = 40000


def _tiny_factory(source: Path, *, output: str, device: torch.device, dtype: torch.dtype) -> HubertEncoder:
    """The 3-layer fixture: 'v1' = layer 2 through final_proj (8-d), 'v2' = last layer (32-d)."""
    config, state = read_hubert_checkpoint(TINY_HUBERT)
    model = build_hubert(config, state, device=device, dtype=dtype)
    if output == "v1":
        return HubertEncoder(model, name=TINY_NAME, output_layer=2, use_final_proj=True)
    return HubertEncoder(model, name=TINY_NAME)


@pytest.fixture(scope="module", autouse=True)
def _tiny_encoder() -> None:
    register_content_encoder(TINY_NAME, _tiny_factory, replace=True)


def _make_work(root: Path, samples: tuple[int, ...] = SEGMENT_SAMPLES) -> Path:
    """A work folder with RVC's 0_gt_wavs / 1_16k_wavs cut from us1 speech (16 kHz sources)."""
    work = root / "work"
    (work / "1_16k_wavs").mkdir(parents=True)
    (work / "0_gt_wavs").mkdir()
    for number, length in enumerate(samples):
        audio, rate = sf.read(VOICES_DIR / "us1" / "speech" / f"{number + 1:03d}.flac", dtype="float32")
        assert rate == 16000 and audio.shape[0] >= length
        clip = audio[:length]
        sf.write(work / "1_16k_wavs" / f"0_{number}.wav", clip, 16000, subtype="FLOAT")
        sf.write(
            work / "0_gt_wavs" / f"0_{number}.wav", resample(clip, 16000, GT_SAMPLE_RATE), GT_SAMPLE_RATE
        )
    return work


def _mtimes(work: Path) -> dict[str, int]:
    return {
        str(p.relative_to(work)): p.stat().st_mtime_ns
        for p in work.glob("[23]*/*.npy")  # 2a_f0, 2b-f0nsf, 3_feature*
    }


def _extract(work: Path, **overrides) -> object:
    params = dict(
        version="v1",
        use_f0=True,
        f0_method="pm",
        content_encoder=TINY_NAME,
        pretrained_dir=None,
        workers=1,
    )
    params.update(overrides)
    return extract_features(work, **params)


def test_extract_writes_rvc_files_and_resumes(tmp_path: Path) -> None:
    work = _make_work(tmp_path)
    calls: list[float] = []
    summary = _extract(work, workers=2, progress=lambda f, _m: calls.append(f))
    assert (summary.done, summary.skipped, summary.failed) == (5, 0, 0)
    assert summary.feature_dir == work / "3_feature256" == feature_dir(work, "v1")
    assert calls[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in calls)

    encoder = _tiny_factory(Path(), output="v1", device=torch.device("cpu"), dtype=torch.float32)
    pm = get_pitch_extractor("pm")
    expected_frames = 0
    for number, length in enumerate(SEGMENT_SAMPLES):
        name = f"0_{number}"
        audio, _ = sf.read(work / "1_16k_wavs" / f"{name}.wav", dtype="float32")
        feats = np.load(work / "3_feature256" / f"{name}.npy")
        assert feats.dtype == np.float32 and feats.shape == ((length - 400) // 320 + 1, 8)
        np.testing.assert_allclose(feats, encoder.encode(torch.from_numpy(audio)[None])[0].numpy(), atol=1e-6)
        expected_frames += feats.shape[0]
        f0_hz = np.load(work / F0_HZ_DIRNAME / f"{name}.npy")
        coarse = np.load(work / F0_COARSE_DIRNAME / f"{name}.npy")
        assert f0_hz.dtype == np.float32 and f0_hz.shape == (length // 160,)
        assert coarse.dtype == np.int64 and coarse.shape == (length // 160,)
        np.testing.assert_array_equal(coarse, f0_to_coarse(f0_hz))
        np.testing.assert_allclose(f0_hz, pm.extract(audio, p_len=length // 160), atol=1e-3)
        assert (f0_hz > 100).mean() > 0.3 and coarse.max() > 1  # speech: mostly voiced
    assert summary.total_frames == expected_frames

    matrix = load_training_features(work, "v1")
    assert matrix.shape == (expected_frames, 8) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[: (16000 - 400) // 320 + 1], np.load(work / "3_feature256/0_0.npy"))
    examples = list_training_examples(work, "v1", use_f0=True)
    assert [e.name for e in examples] == [f"0_{i}" for i in range(5)]
    assert examples[2].gt_wav_path == work / "0_gt_wavs/0_2.wav"
    assert examples[2].feature_path == work / "3_feature256/0_2.npy"
    assert examples[2].f0_coarse_path == work / "2a_f0/0_2.npy"
    assert examples[2].f0_hz_path == work / "2b-f0nsf/0_2.npy"

    before = _mtimes(work)
    assert len(before) == 15
    again = _extract(work, workers=2)
    assert (again.done, again.skipped, again.failed) == (0, 5, 0)
    assert again.total_frames == expected_frames
    assert _mtimes(work) == before

    source = work / "1_16k_wavs" / "0_3.wav"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    third = _extract(work)
    assert (third.done, third.skipped, third.failed) == (1, 4, 0)
    after = _mtimes(work)
    changed = sorted(k for k in before if after[k] != before[k])
    assert changed == ["2a_f0/0_3.npy", "2b-f0nsf/0_3.npy", "3_feature256/0_3.npy"]


def test_pitch_added_later_keeps_content_and_removed_segment_is_dropped(tmp_path: Path) -> None:
    work = _make_work(tmp_path, SEGMENT_SAMPLES[:3])
    first = _extract(work, use_f0=False, version="v2", content_encoder=TINY_HUBERT)
    assert (first.done, first.skipped) == (3, 0)
    assert not (work / F0_HZ_DIRNAME).exists()
    assert np.load(work / "3_feature768/0_0.npy").shape == ((16000 - 400) // 320 + 1, 32)
    assert [e.f0_hz_path for e in list_training_examples(work, "v2", use_f0=False)] == [None] * 3
    with pytest.raises(FeatureError, match="F0 files"):
        list_training_examples(work, "v2", use_f0=True)
    content_before = _mtimes(work)

    second = _extract(work, use_f0=True, version="v2", content_encoder=TINY_HUBERT)
    assert (second.done, second.skipped, second.failed) == (3, 0, 0)  # F0 only
    after = _mtimes(work)
    assert {k: after[k] for k in content_before} == content_before
    assert len(after) == 9

    (work / "1_16k_wavs" / "0_1.wav").unlink()
    third = _extract(work, use_f0=True, version="v2", content_encoder=TINY_HUBERT)
    assert (third.done, third.skipped) == (0, 2)
    assert sorted(_mtimes(work)) == sorted(k for k in after if "0_1" not in k)
    state = json.loads((work / FEATURE_STATE_FILENAME).read_text())
    assert sorted(state["segments"]) == ["0_0", "0_2"]


def test_cancel_then_rerun_completes_and_ignores_partial_files(tmp_path: Path) -> None:
    work = _make_work(tmp_path)
    checks = iter([False, False, False])
    with pytest.raises(Cancelled):
        _extract(work, should_stop=lambda: next(checks, True))
    state = json.loads((work / FEATURE_STATE_FILENAME).read_text())
    recorded = {n for n, e in state["segments"].items() if e["content_frames"] is not None}
    assert recorded and len(recorded) < 5
    # What a kill mid-write could leave: a temp file and a damaged, unrecorded output.
    (work / "3_feature256" / ".0_4.npy.abc123.tmp").write_bytes(b"partial")
    (work / "3_feature256" / "0_4.npy").write_bytes(b"not a numpy file")

    summary = _extract(work)
    assert summary.failed == 0 and summary.done + summary.skipped == 5
    assert summary.done >= 5 - len(recorded)
    assert not list((work / "3_feature256").glob(".*.tmp"))
    assert np.load(work / "3_feature256" / "0_4.npy").shape == ((8123 - 400) // 320 + 1, 8)
    assert len(list_training_examples(work, "v1", use_f0=True)) == 5


def test_bad_segments_fail_alone_with_reasons(tmp_path: Path) -> None:
    work = _make_work(tmp_path, SEGMENT_SAMPLES[:2])
    sf.write(work / "1_16k_wavs" / "0_7.wav", np.zeros(200, np.float32), 16000, subtype="FLOAT")
    sf.write(work / "1_16k_wavs" / "0_8.wav", np.zeros(8000, np.float32), 8000, subtype="FLOAT")
    sf.write(work / "0_gt_wavs" / "0_7.wav", np.zeros(500, np.float32), GT_SAMPLE_RATE)
    summary = _extract(work)
    assert (summary.done, summary.failed) == (2, 2)
    reasons = {f.name: f.reason for f in summary.failures}
    assert "too short" in reasons["0_7"]
    assert "8000 Hz" in reasons["0_8"] and "16000 Hz" in reasons["0_8"]
    assert not (work / "3_feature256" / "0_7.npy").exists()
    assert [e.name for e in list_training_examples(work, "v1", use_f0=True)] == ["0_0", "0_1"]
    assert load_training_features(work, "v1").shape[0] == summary.total_frames


def test_missing_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FeatureError, match="prepare the dataset"):
        _extract(tmp_path)
    (tmp_path / "1_16k_wavs").mkdir()
    with pytest.raises(FeatureError, match="holds no segments"):
        _extract(tmp_path)
    with pytest.raises(ValueError, match="version"):
        _extract(tmp_path, version="v3")
    work = _make_work(tmp_path / "w", SEGMENT_SAMPLES[:4])
    with pytest.raises(FeatureError, match="run feature extraction first"):
        load_training_features(work, "v1")
    # Four F0 jobs with two workers would use the pool: the missing weights are reported up front.
    with pytest.raises(AssetError, match=r"rmvpe\.pt"):
        _extract(work, f0_method="rmvpe", pretrained_dir=tmp_path, workers=2)
    with pytest.raises(PitchMethodUnavailable, match="unknown pitch method 'yin'"):
        _extract(work, f0_method="yin", workers=2)
