"""Voice-model files: RVC inference/training layouts, Timbre's format, safety and atomic saving."""

from __future__ import annotations

import errno
import json
import os
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from infer import models
from infer.errors import ModelLoadError, UnsafeFileError
from infer.models import ModelMetadata, VoiceModel, build_synthesizer, load_voice_model, save_voice_model
from infer.nn import ConfigError
from infer.synthesizer import SynthConfig, Synthesizer
from tests.helpers import HUBERT_FIXTURES, MANIFESTS_DIR, RMVPE_FIXTURES, SYNTH_GOLDEN_DIR, synth_golden

GOLDEN_PATHS = sorted(p for p in SYNTH_GOLDEN_DIR.glob("*.pth") if p.with_suffix(".npz").is_file())
TINY_V2_F0 = synth_golden("v2", use_f0=True, sample_rate=40000)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded; extra OpenMP threads only contend on shared CPUs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(*, use_f0: bool = True, content_dim: int = 768) -> SynthConfig:
    return SynthConfig(
        spec_channels=33,
        segment_size=8,
        inter_channels=8,
        hidden_channels=16,
        filter_channels=32,
        n_heads=2,
        n_layers=2,
        kernel_size=3,
        p_dropout=0.0,
        resblock="1",
        resblock_kernel_sizes=(3, 5),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
        upsample_rates=(4, 4),
        upsample_initial_channel=16,
        upsample_kernel_sizes=(8, 8),
        spk_embed_dim=3,
        gin_channels=8,
        sample_rate=16000,
        content_dim=content_dim,
        use_f0=use_f0,
    )


def metadata_for(config: SynthConfig, **changes) -> ModelMetadata:
    base = ModelMetadata(
        name="tiny voice",
        version="v2" if config.content_dim == 768 else "v1",
        sample_rate=config.sample_rate,
        use_f0=config.use_f0,
        info="12epoch",
        epochs=12,
        steps=345,
        extra={"author": "tests", "tags": ["a", "b"]},
    )
    return replace(base, **changes)


# ------------------------------------------------------------------ loading RVC files


@pytest.mark.parametrize("path", GOLDEN_PATHS, ids=[p.stem for p in GOLDEN_PATHS])
def test_golden_file_loads_with_config_and_metadata(path: Path) -> None:
    raw = torch.load(path, weights_only=True)
    model = load_voice_model(path)
    assert model.config.to_rvc_config() == raw["config"]
    assert model.config.use_f0 == bool(raw["f0"])
    assert model.config.content_dim == {"v1": 256, "v2": 768}[raw["version"]]
    assert model.metadata.version == raw["version"]
    assert model.metadata.sample_rate == raw["config"][-1]
    assert (model.metadata.info, model.metadata.epochs, model.metadata.name) == ("7epoch", 7, path.stem)
    assert model.metadata.content_encoder == "hubert_base"
    assert model.source_path == path
    assert list(model.state_dict) == list(raw["weight"])
    assert all(t.dtype == torch.float16 for t in model.state_dict.values())


def test_g_checkpoint_with_posterior_encoder_loads(tmp_path: Path) -> None:
    config = load_voice_model(TINY_V2_F0).config
    torch.manual_seed(0)
    full = Synthesizer(config).state_dict()
    assert any(k.startswith("enc_q.") for k in full)
    path = tmp_path / "G_2333.pth"
    torch.save({"model": full, "iteration": 12, "optimizer": {"state": {}}, "learning_rate": 1e-4}, path)
    model = load_voice_model(path)
    assert model.config == config
    assert model.metadata.epochs == 12 and model.metadata.version == "v2"
    synth = build_synthesizer(model, fold_weight_norm=False)
    assert synth.enc_q is None
    assert torch.equal(synth.dec.conv_pre.weight, full["dec.conv_pre.weight"])


def test_g_checkpoint_needs_overrides_when_decoder_is_not_a_preset(tmp_path: Path) -> None:
    config = tiny_config()
    torch.manual_seed(1)
    state = {f"module.{k}": v for k, v in Synthesizer(config).state_dict().items()}  # DDP-style prefix
    path = tmp_path / "G_custom.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ModelLoadError, match="config_overrides"):
        load_voice_model(path)
    overrides = {"sample_rate": 16000, "upsample_rates": [4, 4], "segment_size": 8}
    model = load_voice_model(path, config_overrides=overrides)
    assert model.config == config


def test_missing_f0_and_version_default_to_pitch_v1(tmp_path: Path) -> None:
    config = tiny_config(content_dim=256)
    path = tmp_path / "old.pth"
    save_voice_model(path, Synthesizer(config, use_posterior_encoder=False), config, metadata_for(config))
    raw = torch.load(path, weights_only=True)
    torch.save(OrderedDict((k, raw[k]) for k in ("weight", "config", "info", "sr")), path)
    model = load_voice_model(path)
    assert model.config.use_f0 and model.metadata.version == "v1" and model.config.content_dim == 256
    assert model.metadata.name == "old"


# ------------------------------------------------------------------ save / load round trip


def test_save_load_round_trip_tiny(tmp_path: Path) -> None:
    config = tiny_config()
    torch.manual_seed(2)
    synth = Synthesizer(config)  # includes enc_q: it must be left out of the file
    metadata = metadata_for(config)
    path = tmp_path / "voice.pth"
    assert save_voice_model(path, synth, config, metadata) == path

    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, OrderedDict)
    assert list(raw) == ["weight", "config", "info", "sr", "f0", "version", "timbre"]
    assert (raw["info"], raw["sr"], raw["f0"], raw["version"]) == ("12epoch", "16k", 1, "v2")
    assert raw["config"] == config.to_rvc_config()
    assert raw["timbre"]["name"] == "tiny voice" and raw["timbre"]["steps"] == 345
    inference_keys = [k for k in synth.state_dict() if not k.startswith("enc_q.")]
    assert list(raw["weight"]) == inference_keys
    assert all(t.dtype == torch.float16 for t in raw["weight"].values())

    model = load_voice_model(path)
    assert model.config == config
    assert model.metadata == metadata
    expected = synth.state_dict()
    for key, tensor in model.state_dict.items():
        assert torch.equal(tensor, expected[key].to(torch.float16)), key

    # Loading the saved file reproduces the model's output up to fp16 weight rounding.
    loaded = build_synthesizer(model)
    phone = torch.randn(1, 10, 768)
    args = (
        phone,
        torch.tensor([10]),
        torch.randint(1, 256, (1, 10)),
        torch.full((1, 10), 150.0),
        torch.tensor([2]),
    )
    noise, sine_noise = torch.randn(1, 8, 10), torch.randn(1, 10 * 16)
    reference = synth.eval().infer(*args, noise=noise, sine_noise=sine_noise)
    audio = loaded.infer(*args, noise=noise, sine_noise=sine_noise)
    assert (audio - reference).abs().max() < 1e-3
    assert audio.abs().max() > 1e-3


def test_folded_synthesizer_saves_unfolded_weight_norm(tmp_path: Path) -> None:
    config = tiny_config(use_f0=False)
    torch.manual_seed(3)
    synth = Synthesizer(config, use_posterior_encoder=False).eval()
    with torch.no_grad():  # g != ||v||, so the folded file holds a different (g, v) split
        for name, param in synth.named_parameters():
            if name.endswith("weight_g"):
                param.mul_(torch.rand_like(param) + 0.5)
    unfolded_path, folded_path = tmp_path / "a.pth", tmp_path / "b.pth"
    save_voice_model(unfolded_path, synth, config, metadata_for(config))
    synth.fold_weight_norm()
    save_voice_model(folded_path, synth, config, metadata_for(config))
    a, b = load_voice_model(unfolded_path), load_voice_model(folded_path)
    assert list(a.state_dict) == list(b.state_dict)
    key = "dec.ups.0.weight_v"
    assert not torch.equal(a.state_dict[key], b.state_dict[key])
    phone, lengths, sid = torch.randn(1, 6, 768), torch.tensor([6]), torch.tensor([0])
    noise = torch.randn(1, 8, 6)
    out_a = build_synthesizer(a).infer(phone, lengths, None, None, sid, noise=noise)
    out_b = build_synthesizer(b).infer(phone, lengths, None, None, sid, noise=noise)
    assert (out_a - out_b).abs().max() < 1e-3
    assert out_a.abs().max() > 1e-3


def test_save_full_size_matches_manifest(tmp_path: Path) -> None:
    manifest = json.loads((MANIFESTS_DIR / "synth_v2_f0_40k.json").read_text())
    config = SynthConfig.preset("v2", 40000, use_f0=True)
    state = {k: torch.zeros(shape, dtype=torch.float16) for k, shape, _ in manifest["small_weight"]}
    path = tmp_path / "full.pth"
    save_voice_model(path, state, config, metadata_for(config, info="", epochs=None, steps=None, extra={}))
    raw = torch.load(path, weights_only=True, mmap=True)
    rows = [[k, list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in raw["weight"].items()]
    assert rows == manifest["small_weight"]
    assert raw["config"] == manifest["constructor_args_positional"]
    assert load_voice_model(path).config == config


def test_save_rejects_weights_or_metadata_that_do_not_fit(tmp_path: Path) -> None:
    config = tiny_config()
    state = Synthesizer(config, use_posterior_encoder=False).state_dict()
    with pytest.raises(ValueError, match="missing"):
        save_voice_model(tmp_path / "x.pth", {k: v for k, v in state.items() if k != "emb_g.weight"}, config,
                         metadata_for(config))  # fmt: skip
    with pytest.raises(ValueError, match="does not match the config"):
        save_voice_model(tmp_path / "x.pth", state, config, metadata_for(config, sample_rate=40000))
    with pytest.raises(ConfigError):
        metadata_for(config, extra={"bad": object()})
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ atomic writes


def test_atomic_save_keeps_old_file_when_replace_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(use_f0=False)
    path = tmp_path / "voice.pth"
    path.write_bytes(b"previous model")

    def disk_full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError) as info:
        save_voice_model(path, Synthesizer(config, use_posterior_encoder=False), config, metadata_for(config))
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["voice.pth"]


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(use_f0=False)
    path = tmp_path / "voice.pth"
    path.write_bytes(b"previous model")

    def half_write(obj: object, handle) -> None:
        handle.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models.torch, "save", half_write)
    with pytest.raises(OSError):
        save_voice_model(path, Synthesizer(config, use_posterior_encoder=False), config, metadata_for(config))
    assert path.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["voice.pth"]


# ------------------------------------------------------------------ errors and safety


class _Exploit:
    """Pickles as a call to open(target, 'w'): loading it must never run that call."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"weight": {"x": torch.zeros(1)}, "config": [_Exploit(target)]}, path)
    assert not target.exists()
    with pytest.raises(UnsafeFileError, match="refused"):
        load_voice_model(path)
    assert not target.exists()


class _FakeFairseqDictionary:
    """Stands in for fairseq's Dictionary: a class weights-only loading refuses."""

    def __init__(self) -> None:
        self.symbols = ["<s>", "<pad>"]


def test_hubert_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="HuBERT"):
        load_voice_model(HUBERT_FIXTURES / "tiny_hubert_fairseq_layout.pt")
    # A fairseq-style file that also pickles a foreign class is identified without running it.
    path = tmp_path / "hubert_base.pt"
    weights = {"feature_extractor.conv_layers.0.0.weight": torch.zeros(4, 1, 10)}
    torch.save({"model": weights, "task_state": {"dictionaries": [_FakeFairseqDictionary()]}}, path)
    with pytest.raises(ModelLoadError, match="content-encoder"):
        load_voice_model(path)


def test_other_non_voice_files_are_described(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="RMVPE"):
        load_voice_model(RMVPE_FIXTURES / "tiny_rmvpe_fp16.pt")
    disc = tmp_path / "D_100.pth"
    torch.save({"model": {"discriminators.0.convs.0.weight_v": torch.zeros(16, 1, 15)}, "iteration": 1}, disc)
    with pytest.raises(ModelLoadError, match="discriminator checkpoint"):
        load_voice_model(disc)
    other = tmp_path / "other.pth"
    torch.save({"state": 1, "epoch": 3}, other)
    with pytest.raises(ModelLoadError, match=r"not a voice model.*'state', 'epoch'"):
        load_voice_model(other)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listing)
    with pytest.raises(ModelLoadError, match="holds a list"):
        load_voice_model(listing)
    with pytest.raises(ModelLoadError, match="no such file"):
        load_voice_model(tmp_path / "missing.pth")


def _rewrite_golden(tmp_path: Path, edit) -> Path:
    raw = torch.load(TINY_V2_F0, weights_only=True)
    edit(raw)
    path = tmp_path / "edited.pth"
    torch.save(raw, path)
    return path


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    path = _rewrite_golden(tmp_path, lambda raw: raw["weight"].pop("dec.conv_post.weight"))
    with pytest.raises(ModelLoadError, match=r"1 missing keys \['dec\.conv_post\.weight'\]"):
        load_voice_model(path)

    def add_key(raw: dict) -> None:
        raw["weight"]["dec.extra_layer.weight"] = torch.zeros(1)

    with pytest.raises(ModelLoadError, match=r"dec\.extra_layer\.weight"):
        load_voice_model(_rewrite_golden(tmp_path, add_key))


def test_wrong_shapes_are_named(tmp_path: Path) -> None:
    def shrink(raw: dict) -> None:
        raw["weight"]["enc_p.emb_phone.weight"] = torch.zeros(32, 256, dtype=torch.float16)

    with pytest.raises(
        ModelLoadError, match=r"enc_p\.emb_phone\.weight: file \(32, 256\), expected \(32, 768\)"
    ):
        load_voice_model(_rewrite_golden(tmp_path, shrink))

    def wrong_version(raw: dict) -> None:
        raw["version"] = "v1"

    with pytest.raises(ModelLoadError, match="wrong shape"):
        load_voice_model(_rewrite_golden(tmp_path, wrong_version))


def test_unsupported_vocoder_and_foreign_metadata(tmp_path: Path) -> None:
    def refinegan(raw: dict) -> None:
        raw["vocoder"] = "RefineGAN"

    with pytest.raises(ModelLoadError, match="RefineGAN"):
        load_voice_model(_rewrite_golden(tmp_path, refinegan))

    def applio(raw: dict) -> None:
        raw.update(vocoder="HiFi-GAN", embedder_model="contentvec", author="someone", model_hash=None)

    model = load_voice_model(_rewrite_golden(tmp_path, applio))
    assert model.metadata.content_encoder == "hubert_base"
    assert model.metadata.extra["author"] == "someone"
    assert "weight" not in model.metadata.extra


def test_build_synthesizer_is_strict() -> None:
    model = load_voice_model(TINY_V2_F0)
    state = dict(model.state_dict)
    state.pop("flow.flows.0.pre.bias")
    with pytest.raises(ModelLoadError, match=r"flow\.flows\.0\.pre\.bias"):
        build_synthesizer(VoiceModel(model.config, state, model.metadata))
    extra = {**model.state_dict, "dec.unknown": torch.zeros(1)}
    with pytest.raises(ModelLoadError, match=r"dec\.unknown"):
        build_synthesizer(VoiceModel(model.config, extra, model.metadata))
    partial_posterior = {**model.state_dict, "enc_q.pre.weight": torch.zeros(1)}
    synth = build_synthesizer(VoiceModel(model.config, partial_posterior, model.metadata))
    assert synth.enc_q is None and not synth.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in synth.parameters())
