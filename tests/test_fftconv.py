"""FFT (overlap-save) convolutions for the decoder's wide resblocks: same numbers as direct ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infer.nn import fftconv
from infer.nn.generator import ResBlock1, _to_channels_last
from infer.nn.weight_norm import fold_weight_norm


@pytest.mark.parametrize(
    ("channels", "kernel", "dilation", "length", "batch"),
    [(8, 11, 1, 3001, 1), (8, 11, 5, 700, 2), (16, 7, 3, 50, 1), (4, 3, 1, 257, 1), (6, 11, 3, 1, 1)],
)
def test_fft_conv_equals_the_direct_conv(
    channels: int, kernel: int, dilation: int, length: int, batch: int
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv1d(channels, channels, kernel, dilation=dilation, padding=(kernel - 1) * dilation // 2)
    x = torch.randn(batch, channels, length)
    with torch.inference_mode():
        direct = conv(x)
        fast = fftconv.fft_conv1d(conv, x)
    assert fast.shape == direct.shape
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-5 * float(direct.abs().max()))


def test_the_spectrum_cache_follows_the_weights() -> None:
    torch.manual_seed(1)
    conv = nn.Conv1d(4, 4, 11, padding=5)
    x = torch.randn(1, 4, 600)
    with torch.inference_mode():
        before = fftconv.fft_conv1d(conv, x)
    with torch.no_grad():
        conv.weight.mul_(2.0)
    with torch.inference_mode():
        after = fftconv.fft_conv1d(conv, x)
        torch.testing.assert_close(after, conv(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def test_the_fft_path_is_taken_only_where_it_is_exact_and_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = nn.Conv1d(128, 128, 11, padding=5)
    x = torch.randn(1, 128, 100)
    assert fftconv.fft_pays(128, 11) and fftconv.fft_pays(256, 11) and fftconv.fft_pays(128, 7)
    assert not fftconv.fft_pays(128, 3) and not fftconv.fft_pays(32, 11) and not fftconv.fft_pays(64, 11)
    monkeypatch.setenv(fftconv.ENV_SWITCH, "0")
    assert not fftconv.fft_pays(128, 11)
    monkeypatch.delenv(fftconv.ENV_SWITCH)
    with torch.inference_mode():
        assert fftconv.fft_usable(x, conv)
        assert not fftconv.fft_usable(x.double(), conv)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fftconv.fft_usable(x, conv)
    assert not fftconv.fft_usable(x, conv)  # autograd on: training keeps the direct conv
    wide = nn.Conv1d(128, 128, 11, dilation=60, padding=300)  # span 601: longer than half the largest block
    with torch.inference_mode():
        assert not fftconv.fft_usable(x, wide)


def test_traced_and_exported_graphs_keep_the_direct_conv(tmp_path) -> None:
    conv = nn.Conv1d(128, 128, 11, padding=5)
    seen: list[bool] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(fftconv.fft_usable(x, self.conv))
            return self.conv(x)

    x = torch.randn(1, 128, 64)
    with torch.no_grad():
        assert fftconv.fft_usable(x, conv)
        torch.jit.trace(Probe(), x, check_trace=False)
        assert seen == [False]
        torch.onnx.export(Probe(), (x,), str(tmp_path / "probe.onnx"), dynamo=False)
    import onnx  # a requirement (the ONNX export)

    ops = {node.op_type for node in onnx.load(str(tmp_path / "probe.onnx")).graph.node}
    assert "Conv" in ops and not ops & {"DFT", "STFT", "MatMul"}


def test_weights_made_under_inference_mode_work() -> None:
    with torch.inference_mode():
        conv = nn.Conv1d(4, 4, 11, padding=5)
        x = torch.randn(1, 4, 300)
        torch.testing.assert_close(fftconv.fft_conv1d(conv, x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("channels", "channels_last"), [(8, False), (8, True), (128, True)])
def test_a_resblock_gives_the_same_output_on_either_path(channels: int, channels_last: bool) -> None:
    torch.manual_seed(2)
    block = ResBlock1(channels, 11, (1, 3, 5))
    assert block.use_fft == fftconv.fft_pays(channels, 11)
    fold_weight_norm(block)
    x = torch.randn(1, channels, 900)
    if channels_last:
        x = _to_channels_last(x)
    with torch.inference_mode():
        block.use_fft = False
        direct = block(x.clone())
        block.use_fft = True
        fast = block(x.clone())
    assert fast.shape == direct.shape
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-5 * float(direct.abs().max()))
    unfolded = ResBlock1(8, 11, (1, 3, 5))  # weight norm not folded: the direct path, always
    unfolded.use_fft = True
    with torch.inference_mode():
        assert not fftconv.fft_usable(x.squeeze(2) if channels_last else x, unfolded.convs1[0])


def _direct_resblock(x: torch.Tensor, pairs: list[tuple[nn.Conv1d, nn.Conv1d]]) -> torch.Tensor:
    for conv1, conv2 in pairs:
        x = conv2(torch.nn.functional.leaky_relu(conv1(torch.nn.functional.leaky_relu(x, 0.1)), 0.1)) + x
    return x


@pytest.mark.parametrize(
    ("channels", "kernel", "length", "batch", "bias"),
    # lengths around one block's hop (246 for kernel 11 at 256 samples), one sample, batch 2,
    # no bias, and 256 channels (the shorter block of wide layers)
    [
        (8, 11, 246, 1, True),
        (8, 11, 247, 1, True),
        (8, 7, 1, 1, True),
        (6, 11, 2000, 2, False),
        (256, 7, 300, 1, True),
    ],
)
def test_the_fused_resblock_equals_the_direct_one(
    channels: int, kernel: int, length: int, batch: int, bias: bool
) -> None:
    torch.manual_seed(3)
    pairs = [
        (
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel - 1) * d // 2, bias=bias),
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2, bias=bias),
        )
        for d in (1, 3, 5)
    ]
    x = torch.randn(batch, channels, length)
    with torch.inference_mode():
        direct = _direct_resblock(x, pairs)
        fast = fftconv.fft_resblock(x, pairs, 0.1)
    assert fast.shape == direct.shape
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-5 * float(direct.abs().max()))
    assert fftconv.block_for(fftconv.span(pairs[-1][0]), channels) == (128 if channels >= 256 else 256)
