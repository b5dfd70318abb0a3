"""ONNX export of a real-size synthesizer: parity with torch fp32 on the same noise, and its speed.

Usage::

    python bench/onnx_parity.py [--seconds 10 30] [--threads 2] [--repeats 3]

Exports the real-size random-weight v2 40 kHz pitch voice of ``bench/_common.ensure_kit`` (RVC's
shapes: 768-d content, inter 192, hop 400) with RVC's ONNX signature, then for each length feeds
the same phone/pitch/pitchf/ds/rnd to onnxruntime (CPU provider) and to the torch fp32
synthesizer (given the graph's NSF noise, ``infer.onnx_synth.nsf_noise_from``), and prints the
SNR of onnxruntime against torch and the median synthesizer seconds of each. The CI test
(tests/test_onnx.py) asserts >= 60 dB on a tiny model; this is the same check at real size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUT_DIR, ensure_kit, machine_line, median, snr_db
from infer.models import build_synthesizer, load_voice_model
from infer.onnx_synth import OnnxSynthesizer, example_inputs, export_onnx, nsf_noise_from

FRAMES_PER_S = 100
PARITY_SNR_DB = 60.0


def _torch_audio(synth, inputs: dict[str, torch.Tensor]):
    sine_noise = nsf_noise_from(inputs["rnd"], synth.config.hop_length)
    with torch.no_grad():
        return synth.infer(
            inputs["phone"], inputs["phone_lengths"], inputs["pitch"], inputs["pitchf"], inputs["ds"],
            noise_scale=1.0, noise=inputs["rnd"], sine_noise=sine_noise,
        ).numpy()  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Export, compare and time; exit 1 if a length misses the parity bar."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0], help="input lengths")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kit = ensure_kit()
    synth = build_synthesizer(load_voice_model(kit.model_path))
    t0 = time.perf_counter()
    path = export_onnx(synth, OUT_DIR / "onnx" / "bench_voice.onnx")
    size_mb = path.stat().st_size / 1e6
    print(f"# onnx_parity: {path.name} {size_mb:.1f} MB, export {time.perf_counter() - t0:.1f} s")
    print(f"machine: {machine_line(args.threads)}\n")
    session = OnnxSynthesizer.load(path, threads=args.threads)
    print("| input s | SNR onnx vs torch fp32 dB | torch s | onnxruntime s |")
    print("| --- | --- | --- | --- |")
    failed = False
    for seconds in args.seconds:
        inputs = example_inputs(synth, round(seconds * FRAMES_PER_S), seed=1)
        feed = {k: v.numpy() for k, v in inputs.items()}
        torch_s, ort_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            reference = _torch_audio(synth, inputs)
            torch_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            audio = session.run(feed)
            ort_s.append(time.perf_counter() - t)
        snr = snr_db(reference.ravel(), audio.ravel())
        failed |= snr < PARITY_SNR_DB
        print(f"| {seconds:g} | {snr:.1f} | {median(torch_s):.2f} | {median(ort_s):.2f} |")
    print(f"\nparity bar: {PARITY_SNR_DB:g} dB -> {'FAILED' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
