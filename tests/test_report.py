"""The report card of a tiny model trained on the offline whisper-tiny-en encoder.

One tiny training through ``python -m train run`` (report stage included) is shared by the tests;
``python -m train report`` then remakes the card on demand. Values are checked for range and
consistency, not quality (the model trains for a few steps).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from infer.audio import load_audio
from infer.models import load_voice_model
from tests.helpers import REPO_DIR, VOICES_DIR
from train.report import (
    SUMMARY_HEADERS,
    choose_heldout,
    pick_best,
    read_probe_phrases,
    report_audio_pairs,
    report_summary,
)

NAME = "us1card"
STEPS = 6


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2", "TIMBRE_PROBE_AUDIO_DIR": str(VOICES_DIR)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    dataset = root / "dataset"
    dataset.mkdir()
    for i in range(1, 11):
        (dataset / f"{i:03d}.flac").symlink_to(VOICES_DIR / "us1" / "speech" / f"{i:03d}.flac")
    work, models = root / "work", root / "models"
    _run(
        "run",
        "--name",
        NAME,
        "--dataset",
        str(dataset),
        "--work-dir",
        str(work),
        "--models-dir",
        str(models),
        "--pretrained-dir",
        str(root / "pretrained"),
        "--content-encoder",
        "whisper-tiny-en",
        "--size",
        "tiny",
        "--sample-rate",
        "16000",
        "--f0-method",
        "pm",
        "--epochs",
        "2",
        "--save-every",
        "1",
        "--batch-size",
        "4",
        "--max-steps",
        str(STEPS),
        "--from-scratch",
        "--workers",
        "1",
    )
    return {"root": root, "work": work, "models": models}


def _check_metrics(row: dict[str, object]) -> None:
    for key in ("similarity_to_target", "similarity_to_source"):
        value = row[key]
        if row["has_speech"] is False:  # a few-step model may put out noise without speech
            assert value is None
        else:
            assert row["has_speech"] is True and isinstance(value, float) and -1.0 <= value <= 1.0
    cer = row["cer"]
    assert isinstance(cer, float) and math.isfinite(cer) and cer >= 0.0
    for key, upper in (("f0_rmse_cents", 10_000.0), ("voicing_error", 1.0)):
        value = row[key]
        assert value is None or (isinstance(value, float) and 0.0 <= value <= upper), (key, value)


def test_whisper_model_keeps_the_v2_layout_and_records_its_encoder(trained: dict[str, Path]) -> None:
    pth = trained["models"] / NAME / f"{NAME}.pth"
    raw = torch.load(pth, weights_only=True)
    assert list(raw)[:6] == ["weight", "config", "info", "sr", "f0", "version"]
    assert raw["version"] == "v2" and raw["timbre"]["content_encoder"] == "whisper-tiny-en"
    assert tuple(raw["weight"]["enc_p.emb_phone.weight"].shape) == (32, 384)
    # v2 key order: the text encoder comes last.
    assert list(raw["weight"])[-1].startswith("enc_p.")
    model = load_voice_model(pth)
    assert model.config.content_dim == 384 and model.metadata.content_encoder == "whisper-tiny-en"
    meta = json.loads((trained["models"] / NAME / "timbre.json").read_text())
    assert meta["content_encoder"] == "whisper-tiny-en" and meta["version"] == "v2"


def test_heldout_clips_are_left_out_of_training(trained: dict[str, Path]) -> None:
    work = trained["work"]
    heldout = json.loads((work / "heldout.json").read_text())["segments"]
    segments = sorted(p.stem for p in (work / "1_16k_wavs").glob("*.wav"))
    # Ten short clips, one segment each: one segment is held out.
    assert len(segments) >= 10 and len(heldout) == 1 and set(heldout) < set(segments)
    assert heldout == choose_heldout(segments)
    final = load_voice_model(work / "weights" / f"{NAME}.pth")
    assert final.metadata.extra["training_segments"] == len(segments) - len(heldout)
    vits_run = json.loads((work / "vits" / "vits_run.json").read_text())
    assert vits_run["segments"] == len(segments) - len(heldout)


def test_report_card_rates_every_saved_checkpoint(trained: dict[str, Path]) -> None:
    work = trained["work"]
    report = json.loads((work / "report.json").read_text())
    assert {"model", "created", "encoder", "budget", "per_checkpoint", "best", "probes"} <= set(report)
    assert report["model"] == NAME and report["encoder"] == "whisper-tiny-en"
    assert "English" in report["encoder_note"]
    assert report["budget"]["trained_steps"] == STEPS and report["budget"]["size"] == "tiny"

    snapshots = sorted(p.name for p in (work / "weights").glob(f"{NAME}_e*_s*.pth"))
    rows = report["per_checkpoint"]
    assert len(snapshots) >= 2 and sorted(r["checkpoint"] for r in rows) == snapshots
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows) and rows[-1]["step"] == STEPS
    assert rows[-1]["is_final"] and not any(r["is_final"] for r in rows[:-1])
    assert sum(r["is_best"] for r in rows) == 1
    best_row = next(r for r in rows if r["is_best"])
    assert report["best"]["checkpoint"] == best_row["checkpoint"]
    top = max(r["mean"]["similarity_to_target"] for r in rows)
    assert best_row["mean"]["similarity_to_target"] >= top - 0.005

    probes = report["probes"]
    kinds = [p["kind"] for p in probes]
    assert kinds.count("heldout") == 1 and kinds.count("phrase") == 4
    phrase_ids = [p["id"] for p in probes if p["kind"] == "phrase"]
    # The training voice's own phrase (us1) is skipped; the others come in phrases.tsv order.
    assert phrase_ids == [p.clip for p in read_probe_phrases() if p.voice != "us1"][:4]
    shifts = {p["id"]: p["pitch_shift_semitones"] for p in probes}
    assert shifts["us2/speech/013.flac"] >= 7  # a male voice goes up to us1's register
    assert next(p for p in probes if p["kind"] == "heldout")["pitch_shift_semitones"] == 0
    for row in rows:
        assert [p["probe"] for p in row["per_probe"]] == [p["id"] for p in probes]
        for probe_row in row["per_probe"]:
            _check_metrics(probe_row)
        assert row["per_probe"][0]["has_speech"]  # the held-out clip, the training voice itself
        mean = row["mean"]
        expected = np.mean([p["similarity_to_target"] or 0.0 for p in row["per_probe"]])
        assert mean["similarity_to_target"] == pytest.approx(expected)
        wins = sum(
            bool(p["has_speech"]) and p["similarity_to_target"] > p["similarity_to_source"]
            for p in row["per_probe"][1:]
        )
        assert mean["target_wins"] == wins and mean["target_comparisons"] == 4


def test_export_ships_the_report_and_previews(trained: dict[str, Path]) -> None:
    model_dir = trained["models"] / NAME
    assert json.loads((model_dir / "report.json").read_text()) == json.loads(
        (trained["work"] / "report.json").read_text()
    )
    with zipfile.ZipFile(trained["work"] / f"{NAME}.zip") as zf:
        assert "report.json" in zf.namelist()
        assert json.loads(zf.read("report.json"))["model"] == NAME
    pairs = report_audio_pairs(model_dir)
    assert len(pairs) == 4
    for _label, source, converted in pairs:
        assert source.is_relative_to(model_dir.resolve()) and converted.is_relative_to(model_dir.resolve())
        assert load_audio(source, 16000).shape[0] > 16000
        audio = load_audio(converted, 16000)
        assert np.isfinite(audio).all() and audio.shape[0] > 16000
    assert pairs[0][0].startswith("us2/speech/013.flac: I thought the thunder")

    rows = report_summary(json.loads((model_dir / "report.json").read_text()))
    assert all(len(r) == len(SUMMARY_HEADERS) for r in rows)
    assert [r[-1] for r in rows].count("best") == 1
    assert rows[-1][0].endswith("(final)") and rows[-1][2] == str(STEPS)
    assert float(rows[0][3]) == pytest.approx(
        json.loads((model_dir / "report.json").read_text())["per_checkpoint"][0]["mean"][
            "similarity_to_target"
        ],
        abs=5e-4,
    )


def test_report_command_remakes_the_card_and_the_zip(trained: dict[str, Path]) -> None:
    work = trained["work"]
    before = json.loads((work / "report.json").read_text())
    _run(
        "report",
        NAME,
        "--work-dir",
        str(work),
        "--models-dir",
        str(trained["models"]),
        "--max-checkpoints",
        "1",
        "--max-phrases",
        "1",
    )
    after = json.loads((work / "report.json").read_text())
    assert [r["checkpoint"] for r in after["per_checkpoint"]] == [before["per_checkpoint"][-1]["checkpoint"]]
    assert [p["kind"] for p in after["probes"]] == ["heldout", "phrase"]
    # Same checkpoint, same probes, seed 0: the final checkpoint's numbers are reproduced.
    first = before["per_checkpoint"][-1]["per_probe"][:2]
    again = after["per_checkpoint"][0]["per_probe"]
    for a, b in zip(first, again, strict=True):
        assert a["similarity_to_target"] == pytest.approx(b["similarity_to_target"], abs=1e-3)
    with zipfile.ZipFile(work / f"{NAME}.zip") as zf:
        assert json.loads(zf.read("report.json"))["created"] == after["created"]
    assert json.loads((trained["models"] / NAME / "report.json").read_text()) == after


def test_best_checkpoint_rule_breaks_similarity_ties_with_cer() -> None:
    def row(step: int, similarity: float | None, cer: float | None) -> dict[str, object]:
        return {"step": step, "mean": {"similarity_to_target": similarity, "cer": cer}}

    assert pick_best([row(1, 0.70, 0.5), row(2, 0.80, 0.9), row(3, 0.60, 0.1)]) == 1
    assert pick_best([row(1, 0.800, 0.3), row(2, 0.803, 0.6)]) == 0  # within 0.005: lower CER
    assert pick_best([row(1, 0.80, 0.3), row(2, 0.80, 0.3)]) == 1  # full tie: later step
    assert pick_best([row(1, None, 0.3), row(2, 0.1, None)]) == 1


def test_heldout_choice_is_spread_and_skips_small_datasets() -> None:
    assert choose_heldout([f"{f}_{n}" for f in range(3) for n in range(3)]) == []
    names = [f"{f}_{n}" for f in range(40) for n in range(2)]
    chosen = choose_heldout(names)
    # 80 segments: 3 held out, at 1/6, 3/6 and 5/6 of the name order (numeric, not lexical).
    assert chosen == ["6_1", "20_0", "33_0"]
    assert choose_heldout(list(reversed(names))) == chosen
    assert choose_heldout(names, max_segments=1) == ["20_0"]
    assert choose_heldout(names[:25]) == ["3_0", "9_0"]


def test_cli_offers_the_offline_encoder_when_hubert_is_missing(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from infer.content.whisper import ENGLISH_NOTE
    from train.__main__ import main
    from train.pipeline import offline_encoder_hint

    work = tmp_path / "work"
    shutil.copytree(trained["work"] / "1_16k_wavs", work / "1_16k_wavs")
    empty = tmp_path / "pretrained"
    empty.mkdir()
    common = ["--name", "nohubert", "--work-dir", str(work), "--models-dir", str(tmp_path / "models")]
    code = main(["extract", *common, "--pretrained-dir", str(empty), "--f0-method", "pm", "--workers", "1"])
    assert code == 2
    error = capsys.readouterr().err
    assert "hubert_base.pt not found" in error
    assert "--content-encoder whisper-tiny-en" in error and ENGLISH_NOTE in error
    (empty / "hubert_base.pt").write_bytes(b"present")
    assert offline_encoder_hint(empty) is None
