"""Where the decoder's time goes, and which resblock convolutions run faster by FFT on this CPU.

    python bench/decoder_ops.py                 # 2 threads, the v2 40k decoder, 5 s windows
    python bench/decoder_ops.py --threads 1

For every resblock convolution shape of RVC's NSF-HiFiGAN (v2, 40 kHz: 256/128/64/32 channels,
kernels 3/7/11, dilations 1/3/5) on one decode window (512 frames plus margins), the median time
of oneDNN's direct convolution (channels-last, as the decoder runs it) against the overlap-save
FFT path of :mod:`infer.nn.fftconv`, with the relative difference of the two outputs. Then
every whole resblock (three dilated pairs, the leaky ReLUs and residual adds) directly against
the fused :func:`~infer.nn.fftconv.fft_resblock`, which is what ``fft_pays`` chooses by; then the
whole decoder on 5 s of latent with the FFT path on and off (``TIMBRE_FFT_CONV``), alternating.
Prints the CPU model and vector flags; compare figures from one run only.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ensure_kit, load_average, machine_line
from infer.nn import fftconv
from infer.nn.generator import DEFAULT_WINDOW_FRAMES


def _median_ms(fn: object, repeats: int) -> float:
    fn()  # type: ignore[operator]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _shapes(hop_rates: list[int], channels: list[int]) -> list[tuple[int, int, int, int]]:
    """(channels, samples per window, kernel, dilation) of every distinct resblock conv."""
    rows = []
    samples = DEFAULT_WINDOW_FRAMES + 64
    for rate, width in zip(hop_rates, channels, strict=True):
        samples *= rate
        for kernel in (3, 7, 11):
            for dilation in (1, 3, 5):
                rows.append((width, samples, kernel, dilation))
    return rows


def _op_table(repeats: int) -> None:
    print("| channels | samples | kernel | dilation | direct ms | FFT ms | FFT / direct | rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for width, samples, kernel, dilation in _shapes([10, 10, 2, 2], [256, 128, 64, 32]):
        conv = torch.nn.Conv1d(width, width, kernel, dilation=dilation, padding=(kernel - 1) * dilation // 2)
        x = torch.randn(1, width, samples)
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        w4 = conv.weight.unsqueeze(2)

        def run_direct(x4: torch.Tensor = x4, w4: torch.Tensor = w4, conv: torch.nn.Conv1d = conv) -> None:
            F.conv2d(x4, w4, conv.bias, 1, (0, conv.padding[0]), (1, conv.dilation[0]))

        def run_fft(x: torch.Tensor = x, conv: torch.nn.Conv1d = conv) -> None:
            fftconv.fft_conv1d(conv, x)

        with torch.inference_mode():
            direct = _median_ms(run_direct, repeats)
            fast = _median_ms(run_fft, repeats)
            ref = conv(x)
            diff = float((fftconv.fft_conv1d(conv, x) - ref).abs().max() / ref.abs().max())
        print(
            f"| {width} | {samples} | {kernel} | {dilation} | {direct:.1f} | {fast:.1f} | "
            f"{fast / direct:.2f} | {diff:.1e} |",
            flush=True,
        )


def _conv_cl(conv: torch.nn.Conv1d, x4: torch.Tensor) -> torch.Tensor:
    """The decoder's direct path: a (1, k) 2-D conv on channels-last (B, C, 1, T)."""
    weight = conv.weight.unsqueeze(2)
    return F.conv2d(x4, weight, conv.bias, 1, (0, conv.padding[0]), (1, conv.dilation[0]))


def _resblock_table(repeats: int) -> None:
    print("\n| channels | samples | kernel | direct resblock ms | fused FFT resblock ms | FFT / direct |")
    print("|---|---|---|---|---|---|")
    for width, samples, kernel, dilation in _shapes([10, 10, 2, 2], [256, 128, 64, 32]):
        if dilation != 1 or kernel == 3:
            continue
        pairs = [
            (
                torch.nn.Conv1d(width, width, kernel, dilation=d, padding=(kernel - 1) * d // 2),
                torch.nn.Conv1d(width, width, kernel, padding=(kernel - 1) // 2),
            )
            for d in (1, 3, 5)
        ]
        x = torch.randn(1, width, samples)
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)

        def run_direct(x4: torch.Tensor = x4, pairs: list = pairs) -> None:
            h = x4
            for conv1, conv2 in pairs:
                t = _conv_cl(conv1, F.leaky_relu(h, 0.1))
                h = _conv_cl(conv2, F.leaky_relu_(t, 0.1)).add_(h)

        def run_fft(x: torch.Tensor = x, pairs: list = pairs) -> None:
            fftconv.fft_resblock(x, pairs, 0.1)

        with torch.inference_mode():
            times: dict[str, list[float]] = {"direct": [], "fft": []}
            for index in range(repeats):
                for name, fn in (("direct", run_direct), ("fft", run_fft))[:: 1 if index % 2 else -1]:
                    times[name].append(_median_ms(fn, 1))
        direct, fast = statistics.median(times["direct"]), statistics.median(times["fft"])
        print(
            f"| {width} | {samples} | {kernel} | {direct:.0f} | {fast:.0f} | {fast / direct:.2f} |",
            flush=True,
        )


def _decoder_ab(repeats: int, fft_on: set[tuple[int, int]] | None) -> None:
    from infer.pipeline import load_voice

    synth = load_voice(ensure_kit().model_path).synthesizer
    frames = 500
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 192, frames, generator=gen)
    f0 = torch.full((1, frames), 200.0)
    noise = torch.randn(1, frames * synth.config.hop_length, 1, generator=gen)
    g = synth.speaker_embedding(torch.tensor([0]))
    blocks = [m for m in synth.modules() if hasattr(m, "use_fft")]
    rule = {
        id(m): m.use_fft
        if fft_on is None
        else (m.convs1[0].in_channels, m.convs1[0].kernel_size[0]) in fft_on
        for m in blocks
    }
    times: dict[str, list[float]] = {"direct": [], "fft": []}
    outs = {}
    with torch.inference_mode():
        for _ in range(repeats + 1):
            for mode in ("direct", "fft"):
                for m in blocks:
                    m.use_fft = mode == "fft" and rule[id(m)]
                started = time.perf_counter()
                outs[mode] = synth.decode(z, f0, g, sine_noise=noise, frames=(0, frames))
                times[mode].append(time.perf_counter() - started)
    a, b = outs["direct"].double(), outs["fft"].double()
    snr = float(10 * torch.log10((a * a).sum() / ((a - b) ** 2).sum()))
    d, f = statistics.median(times["direct"][1:]), statistics.median(times["fft"][1:])
    used = sorted({(m.convs1[0].in_channels, m.convs1[0].kernel_size[0]) for m in blocks if rule[id(m)]})
    print(
        f"\nwhole decoder, 5 s of latent: direct {d:.2f} s, FFT path {f:.2f} s ({f / d:.2f}x), "
        f"SNR {snr:.0f} dB"
    )
    print(f"FFT path on (channels, kernel): {used}; shortest block {fftconv.MIN_BLOCK_SAMPLES}")


def main(argv: list[str] | None = None) -> int:
    """Print the per-shape table and the whole-decoder A/B."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-shapes", action="store_true", help="only the whole-decoder A/B")
    p.add_argument("--min-block", type=int, default=fftconv.MIN_BLOCK_SAMPLES, help="shortest FFT block")
    p.add_argument(
        "--fft-on", default="", help="resblocks on the FFT path as channels:kernel,... (default: the rule)"
    )
    args = p.parse_args(argv)
    fftconv.MIN_BLOCK_SAMPLES = args.min_block
    fft_on = {tuple(int(v) for v in item.split(":")) for item in args.fft_on.split(",") if item} or None
    torch.set_num_threads(args.threads)
    flags = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = " ".join(sorted(f for f in line.split() if f.startswith(("avx", "amx", "fma"))))
            break
    print(
        f"machine: {machine_line(args.threads)}\nCPU flags (vector): {flags}\n"
        f"load average: {load_average()}\n"
    )
    if not args.no_shapes:
        _op_table(args.repeats)
        _resblock_table(args.repeats)
    _decoder_ab(args.repeats, fft_on)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
