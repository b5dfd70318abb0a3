"""Vocal separation: SI-SDR and speed on the corpus mixtures, F0 on the stems, memory against length.

Usage::

    python bench/separation.py [--threads 2] [--precision fp32] [--f0-methods fcpe pm]
                               [--durations 60 600] [--skip-memory]

* **Quality.** Every ``<mix>.flac`` in ``../shared/data/voices/mixtures`` that has a
  ``<mix>.backing.flac``; the vocal reference is mix minus backing. SI-SDR of the vocal and the
  instrumental estimates of each separator whose weights are here, beside the mixture itself as
  the estimate of both, and separation seconds per second of audio (one warm run each).
* **Pitch.** F0 of the separated vocals against the take's ground truth (``<mix>.f0.csv``, a
  copy of the take's ``.f0.csv``), beside F0 tracked on the raw mixture: RMS error in cents over
  frames voiced in both, the share of those frames more than 50 cents off, and the share of
  frames whose voicing decision differs.
* **Memory.** ``separate_file`` on a 44.1 kHz stereo song (``mix_en1_44k_stereo.flac`` repeated
  to length), each duration in its own process: peak resident set (VmHWM) and the difference from
  the first duration.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from bench._common import SHARED_DIR, current_rss_bytes, load_average, machine_line, peak_rss_bytes  # noqa: E402

MIXTURES_DIR = SHARED_DIR / "data" / "voices" / "mixtures"
MEMORY_SOURCE = MIXTURES_DIR / "mix_en1_44k_stereo.flac"
CHILD_FLAG = "--child-song"
GROSS_ERROR_CENTS = 50.0
GB = 1e9


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    p.add_argument("--f0-methods", nargs="+", default=["fcpe", "pm"])
    p.add_argument("--durations", type=float, nargs="+", default=[60.0, 600.0], help="song lengths (s)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument(CHILD_FLAG, type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _mixtures() -> list[Path]:
    return sorted(p for p in MIXTURES_DIR.glob("*.flac") if p.with_suffix(".backing.flac").is_file())


def _read(path: Path) -> tuple[np.ndarray, int]:
    """(C, L) float32 and the rate."""
    import soundfile

    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), rate


def _quality(args: argparse.Namespace) -> dict[str, dict[str, np.ndarray]]:
    """Print the SI-SDR table; return the vocal stems per (separator, mixture) for the pitch table."""
    from infer.metrics import si_sdr
    from infer.separation import SEPARATORS, available_separators, get_separator

    present = available_separators()
    missing = [name for name in SEPARATORS if name not in present]
    print("## SI-SDR (dB) and speed\n")
    print(
        "| mixture | estimate | vocals SI-SDR | instrumental SI-SDR | vocals - baseline | s per s of audio |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    vocals: dict[str, dict[str, np.ndarray]] = {}
    for mixture in _mixtures():
        mix, rate = _read(mixture)
        backing, _ = _read(mixture.with_suffix(".backing.flac"))
        reference = mix - backing
        baseline = si_sdr(reference, mix)
        backing_baseline = si_sdr(backing, mix)
        print(f"| {mixture.stem} | mixture (baseline) | {baseline:.2f} | {backing_baseline:.2f} | 0.00 | - |")
        for name in present:
            separator = get_separator(name, precision=args.precision)
            separator.separate(mix[:, : rate // 2], rate)  # warm-up
            start = time.perf_counter()
            stems = separator.separate(mix, rate)
            seconds = time.perf_counter() - start
            vocal_sdr = si_sdr(reference, stems.vocals)
            print(
                f"| {mixture.stem} | {name} | {vocal_sdr:.2f} | {si_sdr(backing, stems.instrumental):.2f} | "
                f"{vocal_sdr - baseline:+.2f} | {seconds / (mix.shape[1] / rate):.3f} |"
            )
            vocals.setdefault(name, {})[mixture.stem] = stems.vocals.mean(axis=0)
    for name in missing:
        print(f"\n{name}: not measured, its weights are not here (`python -m infer assets download ...`)")
    return vocals


def _ground_truth(mixture: Path) -> np.ndarray:
    rows = np.loadtxt(mixture.with_suffix(".f0.csv"), delimiter=",", skiprows=1, dtype=np.float64)
    return rows[:, 1]


def _f0_scores(f0: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    from infer.metrics import f0_rmse_cents, voicing_error

    n = min(f0.shape[0], truth.shape[0])
    f0, truth = f0[:n], truth[:n]
    both = (f0 > 0) & (truth > 0)
    gross = (
        float(np.mean(np.abs(1200 * np.log2(f0[both] / truth[both])) > GROSS_ERROR_CENTS))
        if both.any()
        else 1.0
    )
    return f0_rmse_cents(f0, truth), gross, voicing_error(f0, truth)


def _pitch(args: argparse.Namespace, vocals: dict[str, dict[str, np.ndarray]]) -> None:
    from infer.audio import resample
    from infer.pitch import get_pitch_extractor

    print("\n## F0 on the separated vocals vs on the mixture (ground truth: the take's .f0.csv)\n")
    print("| mixture | F0 method | input | RMS error cents | frames > 50 c | voicing error |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mixture in _mixtures():
        mix, rate = _read(mixture)
        truth = _ground_truth(mixture)
        inputs = {"mixture": mix.mean(axis=0)}
        inputs.update({name: per_mix[mixture.stem] for name, per_mix in vocals.items()})
        for method in args.f0_methods:
            extractor = get_pitch_extractor(method)
            for label, audio in inputs.items():
                audio_16k = resample(np.ascontiguousarray(audio, dtype=np.float32), rate, 16000)
                f0 = extractor.extract(audio_16k, p_len=truth.shape[0])
                rmse, gross, voicing = _f0_scores(f0, truth)
                print(f"| {mixture.stem} | {method} | {label} | {rmse:.1f} | {gross:.1%} | {voicing:.1%} |")


def _child(args: argparse.Namespace) -> None:
    """Separate one song file and print one JSON line of memory figures."""
    import torch

    torch.set_num_threads(args.threads)
    from infer.separation import get_separator, separate_file

    separator = get_separator("spleeter-2stems", precision=args.precision)
    rss_loaded = current_rss_bytes()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = separate_file(
            args.child_song, Path(folder) / "out", separator, cache_dir=Path(folder) / "cache"
        )
        wall = time.perf_counter() - start
        channels = result.channels
    out = {
        "rss_loaded_gb": rss_loaded / GB,
        "vm_hwm_gb": peak_rss_bytes() / GB,
        "wall_s": wall,
        "channels": channels,
    }
    print("RESULT " + json.dumps(out), flush=True)


def _write_song(path: Path, duration_s: float) -> None:
    import soundfile

    audio, rate = _read(MEMORY_SOURCE)
    n = round(duration_s * rate)
    reps = -(-n // audio.shape[1])
    soundfile.write(path, np.tile(audio, (1, reps))[:, :n].T, rate, subtype="PCM_16")


def _memory(args: argparse.Namespace) -> int:
    print("\n## Peak memory of separate_file (spleeter-2stems) against song length\n")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for duration in args.durations:
            song = Path(folder) / f"song_{duration:g}s.flac"
            _write_song(song, duration)
            cmd = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(song)]
            cmd += ["--threads", str(args.threads), "--precision", args.precision]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(proc.stderr[-3000:], file=sys.stderr)
                print(f"the {duration:g} s run failed (exit code {proc.returncode})", file=sys.stderr)
                return 1
            results.append((duration, json.loads(lines[-1][len("RESULT ") :])))
            song.unlink()
    print(
        "| song s | RSS after loading GB | peak RSS (VmHWM) GB | peak - first | wall s | s per s of audio |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    first = results[0][1]["vm_hwm_gb"]
    for duration, r in results:
        print(
            f"| {duration:g} | {r['rss_loaded_gb']:.2f} | {r['vm_hwm_gb']:.2f} | "
            f"{r['vm_hwm_gb'] - first:+.2f} | {r['wall_s']:.0f} | {r['wall_s'] / duration:.3f} |"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print their tables."""
    args = _parse_args(argv)
    if args.child_song is not None:
        _child(args)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    print(f"# separation ({args.precision})")
    print(f"machine: {machine_line(args.threads)}")
    print(f"load average at start: {load_average()}\n")
    vocals = _quality(args)
    _pitch(args, vocals)
    code = 0 if args.skip_memory else _memory(args)
    print(f"\nload average at end: {load_average()}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
