"""HuBERT content encoder: goldens, checkpoint layouts, readers, registry and safety."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from infer.content import (
    ContentEncoder,
    HubertConfig,
    HubertEncoder,
    available_content_encoders,
    load_content_encoder,
    load_hubert,
    register_content_encoder,
)
from infer.content.hubert import (
    FOLDED_WEIGHT_NORM_KEYS,
    IGNORED_FAIRSEQ_KEYS,
    HubertModel,
    build_hubert,
    convert_fairseq_state_dict,
    convert_transformers_state_dict,
    read_hubert_checkpoint,
)
from infer.errors import AssetError, ModelLoadError
from infer.safeload import Stub, load_checkpoint_stubbed
from tests.helpers import HUBERT_FIXTURES, synth_golden

TINY_PATH = HUBERT_FIXTURES / "tiny_hubert_fairseq_layout.pt"
GOLDEN_PATH = HUBERT_FIXTURES / "tiny_hubert_golden.npz"
MANIFEST_PATH = HUBERT_FIXTURES / "hubert_base_fairseq_manifest.json"
ATOL = 1e-4
TINY_TRANSFORMERS_CONFIG = {
    "model_type": "hubert",
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "conv_dim": [16] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "do_stable_layer_norm": False,
    "layer_norm_eps": 1e-5,
}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_PATH) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def wav(golden: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(golden["wav"]).unsqueeze(0)


@pytest.fixture(scope="module")
def tiny() -> HubertEncoder:
    return load_hubert(TINY_PATH)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST_PATH.read_text())


def _tiny_fairseq_state_dict() -> dict[str, torch.Tensor]:
    return dict(load_checkpoint_stubbed(TINY_PATH)["model"])


def _close(actual: torch.Tensor, expected: np.ndarray) -> None:
    assert tuple(actual.shape) == expected.shape
    np.testing.assert_allclose(actual.float().numpy(), expected, atol=ATOL, rtol=0)


# --- goldens ----------------------------------------------------------------------------------


def test_golden_conv_features_and_hidden_states(tiny: HubertEncoder, wav: torch.Tensor, golden: dict) -> None:
    outputs = tiny.hidden_states(wav)
    _close(outputs.conv_features, golden["conv_features"])
    assert len(outputs.hidden_states) == 4
    for index, state in enumerate(outputs.hidden_states):
        _close(state, golden[f"hidden_states_{index}"])


def test_golden_last_hidden_state_is_v2_output(tiny: HubertEncoder, wav: torch.Tensor, golden: dict) -> None:
    feats = tiny.encode(wav)
    assert feats.dtype == torch.float32 and not feats.is_inference()
    feats.mul_(1.0)  # callers may edit features in place
    assert tiny.dim == 32 and tiny.hop_length == 320 and tiny.sample_rate == 16000
    assert feats.shape[1] == int(golden["n_frames"]) == (wav.shape[1] - 400) // 320 + 1
    _close(feats, golden["last_hidden_state"])


def test_golden_final_proj_of_layer2(tiny: HubertEncoder, wav: torch.Tensor, golden: dict) -> None:
    projected = HubertEncoder(tiny.model, output_layer=2, use_final_proj=True)
    assert projected.dim == 8
    _close(projected.encode(wav), golden["final_proj_of_layer2"])


def test_golden_through_load_content_encoder_path(wav: torch.Tensor, golden: dict) -> None:
    encoder = load_content_encoder(TINY_PATH, output="v2")
    assert isinstance(encoder, ContentEncoder)
    _close(encoder.encode(wav), golden["last_hidden_state"])
    assert load_content_encoder(TINY_PATH, output="v2") is encoder  # cached
    assert load_content_encoder(TINY_PATH, output="v2", use_cache=False) is not encoder


def test_batch_rows_are_independent(tiny: HubertEncoder, wav: torch.Tensor, golden: dict) -> None:
    other = torch.flip(wav, dims=[1]) * 0.5
    batch = tiny.encode(torch.cat([wav, other]))
    _close(batch[:1], golden["last_hidden_state"])
    torch.testing.assert_close(batch[1:], tiny.encode(other), atol=1e-5, rtol=0)


def test_input_too_short_or_wrong_rank_is_rejected(tiny: HubertEncoder) -> None:
    assert tiny.num_frames(400) == 1 and tiny.num_frames(399) == 0
    assert tiny.encode(torch.zeros(1, 400)).shape == (1, 1, 32)
    with pytest.raises(ValueError, match="too short"):
        tiny.encode(torch.zeros(1, 399))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        tiny.encode(torch.zeros(400))


def test_input_norm_from_cfg_layer_norms_the_waveform(tmp_path: Path, wav: torch.Tensor, tiny) -> None:
    checkpoint = load_checkpoint_stubbed(TINY_PATH)
    checkpoint["cfg"]["task"]["normalize"] = True
    path = tmp_path / "normalized.pt"
    torch.save(checkpoint, path)
    normalized = load_hubert(path)
    assert normalized.config.use_input_norm and not tiny.config.use_input_norm
    loud = wav * 3.0 + 0.01
    expected = tiny.encode(F.layer_norm(loud, loud.shape[-1:]))
    torch.testing.assert_close(normalized.encode(loud), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(tiny.encode(loud), expected, atol=1e-3)


# --- config -----------------------------------------------------------------------------------


def test_config_base_preset_and_frame_count() -> None:
    config = HubertConfig.base()
    assert (config.hop_length, config.receptive_field, config.conv_dim) == (320, 400, 512)
    for length in (400, 401, 719, 720, 12800, 16000 * 40 + 123):
        assert config.num_frames(length) == (length - 400) // 320 + 1
    assert HubertConfig.from_dict({"num_layers": 3, "conv_layers": [[16, 10, 5]]}).conv_layers == (
        (16, 10, 5),
    )
    with pytest.raises(ValueError, match="unknown HubertConfig keys"):
        HubertConfig.from_dict({"hidden_size": 768})
    with pytest.raises(ValueError, match="not supported"):
        HubertConfig(layer_norm_first=True)
    with pytest.raises(ValueError, match="divisible"):
        HubertConfig(num_heads=5)


def test_config_from_state_dict_uses_plain_cfg_and_falls_back_to_shapes(tiny: HubertEncoder) -> None:
    checkpoint = load_checkpoint_stubbed(TINY_PATH)
    weights = checkpoint["model"]
    assert HubertConfig.from_state_dict(weights, cfg=checkpoint["cfg"]) == tiny.config
    assert tiny.config.num_heads == 4 and tiny.config.final_dim == 8
    # Without a usable cfg, 32-wide layers give no 64-wide head count: a clear error.
    for cfg in (None, Stub()):
        with pytest.raises(ModelLoadError, match="head count"):
            HubertConfig.from_state_dict(weights, cfg=cfg)
    bad_cfg = {"model": {**checkpoint["cfg"]["model"], "conv_feature_layers": "[(16,10,5)] * 7"}}
    with pytest.raises(ModelLoadError, match="disagree"):
        HubertConfig.from_state_dict(weights, cfg=bad_cfg)


# --- manifest ---------------------------------------------------------------------------------


def test_manifest_keys_and_shapes_match_base_model(manifest: dict) -> None:
    rows = manifest["state_dict"]
    assert len(rows) == manifest["num_tensors"] == 214
    fairseq = {key: torch.empty(shape, dtype=torch.float16, device="meta") for key, shape, _, _ in rows}
    # The architecture is recoverable from the shapes alone (the real cfg is stubbed).
    assert HubertConfig.from_state_dict(fairseq, cfg=Stub()) == HubertConfig.base()

    with torch.device("meta"):
        model = HubertModel(HubertConfig.base())
    ours = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    folded_parts = {part for pair in FOLDED_WEIGHT_NORM_KEYS.values() for part in pair}
    expected_order = []
    for key, _shape, _, _ in rows:
        if key in IGNORED_FAIRSEQ_KEYS or key == FOLDED_WEIGHT_NORM_KEYS["encoder.pos_conv.0.weight"][1]:
            continue
        expected_order.append("encoder.pos_conv.0.weight" if key in folded_parts else key)
    # Same order, except that a plain conv registers weight before bias (fairseq: bias, weight_g, weight_v).
    pos_conv = ["encoder.pos_conv.0.weight", "encoder.pos_conv.0.bias"]
    assert [k for k in ours if k not in pos_conv] == [k for k in expected_order if k not in pos_conv]
    assert sorted(k for k in ours if k in pos_conv) == sorted(pos_conv)
    model_keys = set(ours) - set(FOLDED_WEIGHT_NORM_KEYS)
    assert (
        set(fairseq) - model_keys - folded_parts
        == set(IGNORED_FAIRSEQ_KEYS)
        == {"mask_emb", "label_embs_concat"}
    )
    for key in model_keys:
        assert ours[key] == tuple(fairseq[key].shape), key
    assert ours["encoder.pos_conv.0.weight"] == (768, 48, 128)
    assert sum(int(np.prod(s)) for s in ours.values()) == manifest["num_elements"] - 768 - 504 * 256 - 128

    converted = convert_fairseq_state_dict(fairseq)
    assert list(converted) == expected_order
    loaded = build_hubert(HubertConfig.base(), converted, device="meta")
    assert loaded.encoder.pos_conv[0].weight.shape == (768, 48, 128)


def test_manifest_transformers_keys_map_to_fairseq_keys(manifest: dict) -> None:
    rows = [row for row in manifest["state_dict"] if row[3] is not None]
    assert len(rows) == 213
    hf_keys = [row[3].split(" ")[0] for row in rows]
    mapped = convert_transformers_state_dict({key: torch.empty(0, device="meta") for key in hf_keys})
    assert list(mapped) == [row[0] for row in rows]
    hf_config = {**manifest["config_base"], "model_type": "hubert"}
    final_proj = {"final_proj.weight": torch.empty(256, 768, device="meta")}
    assert HubertConfig.from_transformers(hf_config, final_proj) == HubertConfig.base()


# --- transformers folders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights_file", "weight_norm_style", "prefix"),
    [
        ("pytorch_model.bin", "parametrizations", ""),
        ("model.safetensors", "weight_g", ""),
        ("model.safetensors", "parametrizations", "hubert."),
    ],
)
def test_transformers_folder_round_trip(
    tmp_path: Path,
    manifest: dict,
    wav: torch.Tensor,
    tiny: HubertEncoder,
    weights_file: str,
    weight_norm_style: str,
    prefix: str,
) -> None:
    to_hf = {row[0]: row[3].split(" ")[0] for row in manifest["state_dict"] if row[3] is not None}
    hf_weights = {}
    for key, value in _tiny_fairseq_state_dict().items():
        if key not in to_hf:
            continue
        name = to_hf[key]
        if weight_norm_style == "weight_g":
            name = name.replace("parametrizations.weight.original0", "weight_g")
            name = name.replace("parametrizations.weight.original1", "weight_v")
        hf_weights[prefix + name] = value.clone()
    assert "masked_spec_embed" in hf_weights or "hubert.masked_spec_embed" in hf_weights
    folder = tmp_path / "hf_hubert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_TRANSFORMERS_CONFIG))
    if weights_file.endswith(".bin"):
        torch.save(hf_weights, folder / weights_file)
    else:
        save_file(hf_weights, str(folder / weights_file))

    encoder = load_content_encoder(folder, output="v2", use_cache=False)
    assert encoder.config == tiny.config
    ours, reference = encoder.hidden_states(wav), tiny.hidden_states(wav)
    assert torch.equal(ours.conv_features, reference.conv_features)
    for a, b in zip(ours.hidden_states, reference.hidden_states, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(encoder.encode(wav), tiny.encode(wav))


def test_transformers_folder_of_another_model_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ModelLoadError, match="whisper"):
        load_content_encoder(folder)
    (folder / "config.json").write_text(
        json.dumps({**TINY_TRANSFORMERS_CONFIG, "do_stable_layer_norm": True})
    )
    torch.save(
        {"feature_extractor.conv_layers.0.conv.weight": torch.zeros(16, 1, 10)}, folder / "pytorch_model.bin"
    )
    with pytest.raises(ModelLoadError, match="not supported"):
        load_content_encoder(folder, use_cache=False)


# --- safety and wrong files -------------------------------------------------------------------


class _CreatesFile:
    """Unpickling this with plain pickle opens (creates) ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_stubbed_loader_never_executes_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wav, golden
) -> None:
    # A real fairseq file pickles fairseq.data.dictionary.Dictionary: make a stand-in to pickle.
    module = types.ModuleType("fairseq.data.dictionary")

    class Dictionary:
        def __init__(self) -> None:
            self.symbols = ["<s>", "<pad>", "</s>", "<unk>", *map(str, range(8))]

    Dictionary.__module__ = module.__name__
    Dictionary.__qualname__ = "Dictionary"
    module.Dictionary = Dictionary
    monkeypatch.setitem(sys.modules, "fairseq", types.ModuleType("fairseq"))
    monkeypatch.setitem(sys.modules, "fairseq.data", types.ModuleType("fairseq.data"))
    monkeypatch.setitem(sys.modules, "fairseq.data.dictionary", module)

    checkpoint = load_checkpoint_stubbed(TINY_PATH)
    marker = tmp_path / "pwned.txt"
    checkpoint["task_state"] = {"dictionaries": [Dictionary()]}
    checkpoint["extra_state"] = {"hook": _CreatesFile(marker)}
    path = tmp_path / "fairseq_like.pt"
    torch.save(checkpoint, path)
    monkeypatch.delitem(sys.modules, "fairseq.data.dictionary")

    # The trap is real: plain unpickling of the same object creates its file.
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_CreatesFile(control))).close()
    assert control.exists()

    encoder = load_hubert(path)
    assert not marker.exists()
    _close(encoder.encode(wav), golden["last_hidden_state"])
    loaded = load_checkpoint_stubbed(path)
    assert not marker.exists()
    assert isinstance(loaded["extra_state"]["hook"], Stub)
    assert isinstance(loaded["task_state"]["dictionaries"][0], Stub)


def test_rvc_voice_model_gives_model_load_error() -> None:
    with pytest.raises(ModelLoadError, match="RVC voice model"):
        load_content_encoder(synth_golden("v2", use_f0=True), use_cache=False)


def test_wrong_files_give_model_load_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelLoadError):
        load_hubert(garbage)
    other = tmp_path / "other.pt"
    torch.save({"model": {"conv.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(ModelLoadError, match="not a HuBERT"):
        load_hubert(other)
    truncated = tmp_path / "truncated.pt"
    weights = _tiny_fairseq_state_dict()
    del weights["encoder.layers.2.fc2.bias"]
    torch.save({"model": weights, "cfg": load_checkpoint_stubbed(TINY_PATH)["cfg"]}, truncated)
    with pytest.raises(ModelLoadError, match=re.escape("missing ['encoder.layers.2.fc2.bias']")):
        load_hubert(truncated)
    with pytest.raises(ModelLoadError, match="neither a known name"):
        load_content_encoder(tmp_path / "nope.pt")


# --- registry ---------------------------------------------------------------------------------


def test_named_encoder_resolves_in_pretrained_dir(tmp_path: Path, wav: torch.Tensor, golden: dict) -> None:
    assert "hubert_base" in available_content_encoders()
    with pytest.raises(AssetError, match=r"hubert_base\.pt not found"):
        load_content_encoder("hubert_base", pretrained_dir=tmp_path, use_cache=False)
    shutil.copy(TINY_PATH, tmp_path / "hubert_base.pt")
    encoder = load_content_encoder("hubert_base", pretrained_dir=tmp_path, use_cache=False)
    assert encoder.name == "hubert_base" and encoder.dim == 32
    _close(encoder.encode(wav), golden["last_hidden_state"])
    # v1 wants layer 9; the tiny model has 3 layers.
    with pytest.raises(ModelLoadError, match="output layer 9"):
        load_content_encoder("hubert_base", output="v1", pretrained_dir=tmp_path, use_cache=False)


def test_register_custom_encoder(tmp_path: Path) -> None:
    class Constant:
        name = "constant"
        dim = 3
        sample_rate = 16000
        hop_length = 320

        def encode(self, wav_16k: torch.Tensor) -> torch.Tensor:
            return torch.ones(wav_16k.shape[0], (wav_16k.shape[1] - 400) // 320 + 1, self.dim)

    seen = {}

    def factory(source: Path, *, output: str, device: torch.device, dtype: torch.dtype) -> Constant:
        seen.update(source=source, output=output, device=device, dtype=dtype)
        return Constant()

    register_content_encoder("test_constant", factory, replace=True)
    assert "test_constant" in available_content_encoders()
    encoder = load_content_encoder("test_constant", output="v1", pretrained_dir=tmp_path, use_cache=False)
    assert encoder.encode(torch.zeros(2, 720)).shape == (2, 2, 3)
    assert seen == {"source": tmp_path, "output": "v1", "device": torch.device("cpu"), "dtype": torch.float32}
    with pytest.raises(ValueError, match="already registered"):
        register_content_encoder("test_constant", lambda *a, **k: Constant())
    with pytest.raises(ValueError, match="output must be"):
        load_content_encoder("test_constant", output="v3", pretrained_dir=tmp_path)


def test_read_hubert_checkpoint_returns_converted_weights() -> None:
    config, weights = read_hubert_checkpoint(TINY_PATH)
    assert not set(IGNORED_FAIRSEQ_KEYS) & set(weights)
    assert "encoder.pos_conv.0.weight" in weights and "encoder.pos_conv.0.weight_g" not in weights
    model = build_hubert(config, weights)
    # Folded weight norm: every kernel tap's (out, in) slice has norm |g|.
    raw = _tiny_fairseq_state_dict()
    tap_norms = torch.linalg.vector_norm(model.encoder.pos_conv[0].weight, dim=(0, 1))
    torch.testing.assert_close(tap_norms, raw["encoder.pos_conv.0.weight_g"].float().abs().flatten())
