"""Peak memory of a whole conversion against input length, each length in a fresh process.

Usage::

    python bench/memory.py [--durations 60 600] [--f0-method rmvpe] [--threads 2] [--precision auto]

Each duration runs in its own subprocess (so one run's peak cannot hide another's) with the
real-size random-weight models of ``bench/convert_speed.py``, the index at index_rate 0.75,
rms_mix_rate 0.25 and protect 0.33. The child reports the resident set after the models are
loaded and the peak resident set of the whole process (``VmHWM`` from ``/proc/self/status``, and
``ru_maxrss``), plus the resident set at every progress report, so growth across chunks shows.
The parent prints one row per duration and the difference of each peak from the first.

The input is the corpus' 3-minute speech file repeated to length. ``THP_MEM_ALLOC_ENABLE=1`` is
set before torch is imported, as the CLI does.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from bench._common import (  # noqa: E402
    current_rss_bytes,
    ensure_kit,
    load_average,
    load_input,
    machine_line,
    peak_rss_bytes,
)

CHILD_FLAG = "--child-duration"
GB = 1e9


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--durations", type=float, nargs="+", default=[60.0, 600.0], help="input lengths (s)")
    p.add_argument("--f0-method", default="rmvpe")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--trace", action="store_true", help="print the resident set at every progress report")
    p.add_argument(CHILD_FLAG, type=float, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _child(args: argparse.Namespace) -> None:
    """Convert ``args.child_duration`` seconds and print one JSON line of memory figures."""
    import torch

    torch.set_num_threads(args.threads)
    from infer.pipeline import ConvertParams, Resources, convert, load_voice

    kit = ensure_kit()
    resources = Resources(pretrained_dir=kit.pretrained_dir, precision=args.precision)
    params = ConvertParams(f0_method=args.f0_method, index_rate=0.75, rms_mix_rate=0.25, protect=0.33, seed=0)
    audio = load_input(args.child_duration)
    voice = load_voice(kit.model_path, kit.index_path)
    rss_loaded = current_rss_bytes()
    trace: list[tuple[str, float, float]] = []

    def progress(fraction: float, message: str) -> None:
        trace.append((message, current_rss_bytes() / GB, peak_rss_bytes() / GB))

    start = time.perf_counter()
    result = convert(audio, voice, params, resources=resources, progress=progress)
    wall = time.perf_counter() - start
    out = {
        "duration_s": args.child_duration,
        "rss_loaded_gb": rss_loaded / GB,
        "rss_end_gb": current_rss_bytes() / GB,
        "vm_hwm_gb": peak_rss_bytes() / GB,
        "ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB,
        "wall_s": wall,
        "output_samples": int(result.audio.shape[0]),
        "trace": trace,
    }
    print("RESULT " + json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run each duration in a subprocess and print the comparison table."""
    args = _parse_args(argv)
    if args.child_duration is not None:
        _child(args)
        return 0
    ensure_kit()  # written once, outside the measured processes
    print(f"# memory: peak RSS against input length ({args.f0_method}, {args.precision})")
    print(f"machine: {machine_line(args.threads)}")
    print(f"load average at start: {load_average()}")
    results = []
    for duration in args.durations:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            CHILD_FLAG,
            str(duration),
            "--f0-method",
            args.f0_method,
            "--threads",
            str(args.threads),
            "--precision",
            args.precision,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stderr[-3000:], file=sys.stderr)
            print(f"the {duration:g} s run failed (exit code {proc.returncode})", file=sys.stderr)
            return 1
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        print(f"  done {duration:g} s in {results[-1]['wall_s']:.0f} s (load average {load_average()})")
    print()
    print("| input s | RSS after loading GB | peak RSS (VmHWM) GB | ru_maxrss GB | peak - first | wall s |")
    print("| --- | --- | --- | --- | --- | --- |")
    first = results[0]["vm_hwm_gb"]
    for r in results:
        print(
            f"| {r['duration_s']:g} | {r['rss_loaded_gb']:.2f} | {r['vm_hwm_gb']:.2f} | "
            f"{r['ru_maxrss_gb']:.2f} | {r['vm_hwm_gb'] - first:+.2f} | {r['wall_s']:.0f} |"
        )
    if args.trace:
        for r in results:
            print()
            print(f"trace for {r['duration_s']:g} s (message: RSS GB / peak GB)")
            for message, rss, peak in r["trace"]:
                print(f"  {message}: {rss:.2f} / {peak:.2f}")
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
