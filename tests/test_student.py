"""The live student: causality, streaming equals whole-file, the file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from infer.errors import ModelLoadError
from infer.nn.configs import ConfigError
from infer.student import (
    LiveStudent,
    StudentConfig,
    StudentEngine,
    StudentStreamer,
    load_student,
    save_student,
)


def _student(config: StudentConfig, seed: int = 0) -> LiveStudent:
    torch.manual_seed(seed)
    student = LiveStudent(config).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (the bias table too)
        for layer in student.decoder:
            layer.offset_bias.normal_(0.0, 1.0)
    return student


CONFIGS = {
    "tiny": StudentConfig.tiny(),
    "extra-lookahead": StudentConfig(
        frame_samples=8, lookahead_samples=20, prenet_channels=4, encoder_channels=16, encoder_layers=4,
        dilation_cycle=3, decoder_dim=16, decoder_heads=4, decoder_layers=2, attention_window=5,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_output_sample_before_t_minus_lookahead_depends_on_input_after_t(
    name: str, one_thread: object
) -> None:
    config = CONFIGS[name]
    student = _student(config)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal(1200).astype(np.float32) * 0.3).view(1, 1, -1)
    with torch.no_grad():
        base = student(x)[0, 0]
        for t in (0, 37, 400, 801, 1199):
            perturbed = x.clone()
            perturbed[..., t:] += torch.from_numpy(rng.standard_normal(1200 - t).astype(np.float32))
            out = student(perturbed)[0, 0]
            first_changed = int(torch.nonzero((out - base).abs() > 0)[0])
            assert first_changed >= t - config.lookahead_samples, (t, first_changed)
            # the bound is tight: a sample within the lookahead of t does react
            assert first_changed <= max(0, t - config.lookahead_samples) + config.frame_samples


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chunk_by_chunk_equals_whole_file(name: str, one_thread: object) -> None:
    config = CONFIGS[name]
    student = _student(config, seed=3)
    audio = (np.random.default_rng(2).standard_normal(3001) * 0.3).astype(np.float32)
    with torch.no_grad():
        whole = student(torch.from_numpy(audio).view(1, 1, -1))[0, 0].numpy()
    assert whole.shape == audio.shape and np.abs(whole).max() > 1e-3
    for sizes in ((1,), (7,), (16, 160), (37, 5, 400), (3001,)):
        streamer = StudentStreamer(student)
        outs, position, i = [], 0, 0
        while position < audio.shape[0]:
            size = sizes[i % len(sizes)]
            outs.append(streamer.push(audio[position : position + size]))
            position += size
            i += 1
        outs.append(streamer.flush())
        streamed = np.concatenate(outs)
        assert streamed.shape == whole.shape, sizes
        np.testing.assert_allclose(streamed, whole, atol=2e-5, rtol=1e-4, err_msg=str(sizes))


def test_attention_cache_stays_bounded_and_engine_blocks_match_the_stream(one_thread: object) -> None:
    config = StudentConfig.tiny()
    student = _student(config)
    engine = StudentEngine(student, block_samples=160)
    audio = (np.random.default_rng(4).standard_normal(160 * 12) * 0.3).astype(np.float32)
    blocks = [engine.process(audio[i * 160 : (i + 1) * 160]) for i in range(12)]
    assert all(b.shape == (160,) for b in blocks)
    assert all(k.shape[2] == config.attention_window - 1 for k in engine.state.keys)
    # the engine's output is the whole-file output delayed by the shift part of the lookahead
    with torch.no_grad():
        whole = student(torch.from_numpy(audio).view(1, 1, -1))[0, 0].numpy()
    shift = config.shift_samples
    np.testing.assert_allclose(np.concatenate(blocks)[shift:], whole[: whole.shape[0] - shift], atol=2e-5)
    assert engine.config.algorithmic_latency_s == pytest.approx((160 + 16) / 16000)
    with pytest.raises(ValueError, match="multiple of 16"):
        StudentEngine(student, block_samples=100)


def test_student_file_round_trips_and_refuses_others(tmp_path: Path) -> None:
    student = _student(StudentConfig.tiny())
    path = tmp_path / "live_student.pt"
    save_student(student, path, {"teacher_sha256": "abc", "steps": 3})
    loaded = load_student(path)
    assert loaded.config == student.config and loaded.metadata["steps"] == 3
    x = torch.randn(1, 1, 320)
    with torch.no_grad():
        torch.testing.assert_close(loaded.build()(x), student(x))
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="not a Timbre live student"):
        load_student(tmp_path / "other.pt")
    data = torch.load(path, weights_only=True)
    data["config"]["encoder_channels"] = 32
    torch.save(data, tmp_path / "mismatch.pt")
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_student(tmp_path / "mismatch.pt")
    with pytest.raises(ConfigError, match="lookahead_samples"):
        StudentConfig(frame_samples=16, lookahead_samples=4)
    with pytest.raises(ConfigError, match="unknown keys"):
        StudentConfig.from_dict({"width": 3})
