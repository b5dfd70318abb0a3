"""Pitch accuracy of every available F0 method on the sung takes with exact ground truth.

Usage::

    python bench/pitch_accuracy.py [--methods pm fcpe ...] [--rmvpe PATH] [--max-takes N]

``--max-takes N`` keeps N takes chosen round-robin over the voices (crepe 'full' needs
about 1.8 s of compute per second of audio on 2 threads; all takes are ~204 s).

Reads ``<voices>/*/singing/*.flac`` and the matching ``.f0.csv`` (10 ms frames, frame k
at k * 10 ms, 0 = unvoiced), runs each method with ``p_len`` equal to the ground-truth
frame count, and prints a markdown table pooled over all frames of all takes:

* median |error| in cents on frames both call voiced, and the share of those > 50 cents;
* V/UV disagreement: share of all frames where exactly one of them is voiced;
* false voiced: share of ground-truth unvoiced frames the method calls voiced;
* false unvoiced: share of ground-truth voiced frames the method calls unvoiced;
* compute (wall-clock) seconds per second of audio after one warm-up call, torch threads = 2,
  and the process CPU seconds (all threads) per second of audio, which a busy machine
  inflates less than the wall clock.

'rmvpe' is reported as unavailable unless real weights are given with ``--rmvpe``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO_DIR = Path(__file__).resolve().parents[1]
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from infer.errors import TimbreError  # noqa: E402
from infer.pitch import PITCH_METHODS, available_methods, get_pitch_extractor  # noqa: E402

DEFAULT_VOICES_DIR = Path(os.environ.get("TIMBRE_SHARED_DIR", REPO_DIR.parent / "shared")) / "data" / "voices"
GROSS_ERROR_CENTS = 50.0
TORCH_THREADS = 2


@dataclass
class Tally:
    """Frame counts and errors pooled over takes."""

    errors_cents: list[np.ndarray] = field(default_factory=list)
    n_frames: int = 0
    n_disagree: int = 0
    n_truth_unvoiced: int = 0
    n_false_voiced: int = 0
    n_truth_voiced: int = 0
    n_false_unvoiced: int = 0
    compute_s: float = 0.0
    cpu_s: float = 0.0
    audio_s: float = 0.0

    def add(
        self, f0_hz: np.ndarray, truth_hz: np.ndarray, compute_s: float, cpu_s: float, audio_s: float
    ) -> None:
        voiced, truth_voiced = f0_hz > 0, truth_hz > 0
        both = voiced & truth_voiced
        self.errors_cents.append(np.abs(1200.0 * np.log2(f0_hz[both] / truth_hz[both])))
        self.n_frames += truth_hz.shape[0]
        self.n_disagree += int(np.sum(voiced != truth_voiced))
        self.n_truth_unvoiced += int(np.sum(~truth_voiced))
        self.n_false_voiced += int(np.sum(voiced & ~truth_voiced))
        self.n_truth_voiced += int(np.sum(truth_voiced))
        self.n_false_unvoiced += int(np.sum(~voiced & truth_voiced))
        self.compute_s += compute_s
        self.cpu_s += cpu_s
        self.audio_s += audio_s

    def row(self, method: str) -> str:
        errors = np.concatenate(self.errors_cents) if self.errors_cents else np.zeros(0)
        median = f"{np.median(errors):.2f}" if errors.size else "-"
        gross = f"{100.0 * np.mean(errors > GROSS_ERROR_CENTS):.2f}" if errors.size else "-"
        return (
            f"| {method} | {median} | {gross} | {pct(self.n_disagree, self.n_frames)} "
            f"| {pct(self.n_false_voiced, self.n_truth_unvoiced)} "
            f"| {pct(self.n_false_unvoiced, self.n_truth_voiced)} "
            f"| {self.compute_s / max(self.audio_s, 1e-9):.4f} | {self.cpu_s / max(self.audio_s, 1e-9):.4f} "
            f"| {errors.size} |"
        )


def pct(count: int, total: int) -> str:
    return f"{100.0 * count / total:.2f}" if total else "-"


def find_takes(voices_dir: Path) -> list[tuple[Path, Path]]:
    takes = []
    for audio_path in sorted(voices_dir.glob("*/singing/*.flac")):
        truth_path = audio_path.with_suffix(".f0.csv")
        if truth_path.is_file():
            takes.append((audio_path, truth_path))
    return takes


def spread_over_voices(takes: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Reorder takes round-robin over voices (a01 of each voice, then a02...), so a prefix spans voices."""
    by_voice: dict[str, list[tuple[Path, Path]]] = {}
    for take in takes:
        by_voice.setdefault(take[0].parent.parent.name, []).append(take)
    order = sorted(by_voice.values(), key=lambda group: group[0][0].parent.parent.name)
    return [group[i] for i in range(max(map(len, order))) for group in order if i < len(group)]


def load_take(audio_path: Path, truth_path: Path) -> tuple[np.ndarray, np.ndarray]:
    audio, rate = sf.read(audio_path, dtype="float32", always_2d=False)
    if rate != 16000 or audio.ndim != 1:
        raise SystemExit(f"{audio_path}: expected 16 kHz mono, got {rate} Hz with shape {audio.shape}")
    truth = np.loadtxt(truth_path, delimiter=",", skiprows=1, dtype=np.float64)
    return audio, truth[:, 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=PITCH_METHODS, help="methods to run (default: all)")
    parser.add_argument("--rmvpe", type=Path, help="real rmvpe.pt weights (rmvpe is skipped without them)")
    parser.add_argument(
        "--voices-dir", type=Path, default=DEFAULT_VOICES_DIR, help="the voices corpus folder"
    )
    parser.add_argument("--max-takes", type=int, default=None, help="use N takes, spread over the voices")
    parser.add_argument("--device", default="cpu", help="torch device for the neural methods")
    args = parser.parse_args(argv)

    torch.set_num_threads(TORCH_THREADS)
    takes = find_takes(args.voices_dir)
    if not takes:
        raise SystemExit(f"no sung takes with ground truth under {args.voices_dir}/*/singing/")
    if args.max_takes is not None:
        takes = spread_over_voices(takes)[: args.max_takes]
    loaded = [load_take(a, t) for a, t in takes]
    total_audio_s = sum(audio.shape[0] for audio, _ in loaded) / 16000

    methods = list(args.methods or PITCH_METHODS)
    usable = set(available_methods(None))
    if args.rmvpe is not None and args.rmvpe.is_file():
        usable.add("rmvpe")

    names = ", ".join(f"{a.parent.parent.name}/{a.stem}" for a, _ in takes) if args.max_takes else "all"
    print(f"takes: {names}")
    print(f"{len(takes)} takes, {total_audio_s:.1f} s of audio, torch threads {TORCH_THREADS}, {args.device}")
    print()
    print(
        "| method | median abs error (c) | gross > 50 c (%) | V/UV disagree (%) | false voiced (%) "
        "| false unvoiced (%) | compute s / audio s | CPU s / audio s | frames compared |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        if method not in usable:
            reason = "no real weights (--rmvpe)" if method == "rmvpe" else "package or weights missing"
            print(f"| {method} | unavailable: {reason} | | | | | | | |")
            continue
        try:
            extractor = get_pitch_extractor(method, device=args.device, rmvpe_path=args.rmvpe)
        except TimbreError as exc:
            print(f"| {method} | unavailable: {exc} | | | | | | | |")
            continue
        extractor.extract(loaded[0][0][:16000])
        tally = Tally()
        for audio, truth in loaded:
            start, start_cpu = time.perf_counter(), time.process_time()
            f0 = extractor.extract(audio, p_len=truth.shape[0])
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            tally.add(f0.astype(np.float64), truth, elapsed, elapsed_cpu, audio.shape[0] / 16000)
        print(tally.row(method), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
