"""Per-stage wall time and real-time factor of a whole conversion with real-size models.

Usage::

    python bench/convert_speed.py [--duration 60] [--f0-methods fcpe rmvpe] [--repeats 3]
        [--precision fp32 bf16 onnx] [--threads 2]

Both precisions and the onnxruntime engine are timed by default; ``auto`` (what the CLI and
studio use) resolves to bf16 on CPUs with native bfloat16 and to fp32 elsewhere, so the two rows
bracket it. The ``onnx`` row is ``--engine onnx``: content and F0 as fp32, the synthesizer
(text encoder, flow, decoder: column ``synthesizer_onnx``) on onnxruntime's CPU provider with
the same thread count; the graph is exported once into ``bench/out/onnx``. Its SNR against fp32
is not a parity figure (the graph takes its NSF noise from ``rnd``, torch draws its own); see
``bench/onnx_parity.py`` for parity on the same noise.

The models are real-size with random weights (HuBERT base, RMVPE, RVC's v2 40 kHz pitch
synthesizer) plus an ``IVF512,Flat`` index of 20k random 768-d rows, written once under
``bench/out/`` (git-ignored). The input is the corpus' 3-minute speech file, repeated or cut
to ``--duration`` seconds. Settings as in the reference measurements of
``../shared/BENCHMARKS.md``: index_rate 0.75, rms_mix_rate 0.25, protect 0.33, RVC's CPU
padding (chunks of ~38 s), fixed seed.

For each F0 method and precision: one warm-up conversion of ``--warmup-duration`` seconds, then
``--repeats`` timed conversions. The markdown table gives medians per stage, the total, the
real-time factor (total / input duration), the process CPU seconds of the median run (less
inflated than wall time when other jobs share the cores) and the peak RSS since the start of
that case's warm-up. With more than one precision, the SNR of each output against the fp32
output of the same method and seed is printed too.

The huge-page allocator (``THP_MEM_ALLOC_ENABLE=1``) is switched on before torch is imported,
as the CLI does; run with ``THP_MEM_ALLOC_ENABLE=0`` to measure without it.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    Kit,
    ensure_kit,
    load_average,
    load_input,
    machine_line,
    median,
    peak_rss_bytes,
    reset_peak_rss,
    snr_db,
)
from infer.pipeline import Converter, ConvertParams, Resources, load_voice

STAGES = (
    "prepare", "content", "f0", "retrieval", "text_encoder", "flow", "decoder", "synthesizer_onnx", "post",
)  # fmt: skip
PRECISIONS = ("fp32", "bf16", "onnx")
"""Rows: two arithmetics of the torch engine, and the onnxruntime engine (fp32)."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="input length in seconds")
    p.add_argument("--f0-methods", nargs="+", default=["fcpe", "rmvpe"], help="F0 methods to time")
    p.add_argument("--repeats", type=int, default=3, help="timed conversions per case")
    p.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--warmup-duration", type=float, default=10.0, help="warm-up input length in seconds")
    p.add_argument("--no-index", action="store_true", help="convert without the retrieval index")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _convert_params(method: str, seed: int, index_rate: float) -> ConvertParams:
    return ConvertParams(f0_method=method, index_rate=index_rate, rms_mix_rate=0.25, protect=0.33, seed=seed)


def _resources(kit: Kit, precision: str) -> Resources:
    if precision == "onnx":
        return Resources(pretrained_dir=kit.pretrained_dir, precision="fp32", engine="onnx")
    return Resources(pretrained_dir=kit.pretrained_dir, precision=precision)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the markdown table."""
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TIMBRE_ONNX_CACHE", str(Path(__file__).resolve().parent / "out" / "onnx"))
    kit = ensure_kit()
    audio = load_input(args.duration)
    warmup_audio = load_input(args.warmup_duration)
    voice = load_voice(kit.model_path, None if args.no_index else kit.index_path)
    index_rate = 0.0 if args.no_index else 0.75
    print(f"# convert_speed: {args.duration:g} s input, {args.repeats} repeats")
    print(f"machine: {machine_line(args.threads)}")
    print(f"load average at start: {load_average()}")
    print()

    rows: list[list[str]] = []
    outputs: dict[tuple[str, str], np.ndarray] = {}
    for method in args.f0_methods:
        for precision in args.precision:
            params = _convert_params(method, args.seed, index_rate)
            converter = Converter(voice, _resources(kit, precision))
            reset_peak_rss()
            converter.convert(warmup_audio, params)
            runs: list[dict[str, float]] = []
            for _ in range(args.repeats):
                cpu0 = time.process_time()
                result = converter.convert(audio, params)
                timings = dict(result.timings_s)
                timings["cpu"] = time.process_time() - cpu0
                runs.append(timings)
            outputs[(method, precision)] = result.audio
            totals = [r["total"] - r.get("load", 0.0) for r in runs]
            med_total = median(totals)
            cells = [method, precision]
            cells += [f"{median([r.get(s, 0.0) for r in runs]):.2f}" for s in STAGES]
            cells += [
                f"{med_total:.2f}",
                f"{med_total / args.duration:.3f}",
                f"{min(totals):.2f}-{max(totals):.2f}",
                f"{median([r['cpu'] for r in runs]):.1f}",
                f"{peak_rss_bytes() / 1e9:.2f}",
            ]
            rows.append(cells)
            print(f"  done {method}/{precision} (load average {load_average()})", flush=True)

    print()
    header = ["f0", "precision", *STAGES, "total s", "RTF", "total range s", "CPU s", "peak RSS GB"]
    print(_row(header))
    print(_row(["---"] * len(header)))
    for cells in rows:
        print(_row(cells))
    print()
    print("Stage times are medians in seconds; total excludes the (cached) model loading.")
    if len(args.precision) > 1:
        for method in args.f0_methods:
            ref = outputs.get((method, "fp32"))
            for precision in args.precision:
                if precision == "fp32" or ref is None:
                    continue
                snr = snr_db(ref, outputs[(method, precision)])
                print(f"SNR of {method}/{precision} against {method}/fp32: {snr:.1f} dB")
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
