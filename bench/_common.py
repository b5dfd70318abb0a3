"""Shared helpers for the conversion benchmarks: real-size random checkpoints, inputs, memory.

Import this module only after ``THP_MEM_ALLOC_ENABLE`` has been decided (it imports torch):
each benchmark script sets the variable at its top, before any import of torch.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parents[1]
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

OUT_DIR = REPO_DIR / "bench" / "out"
SHARED_DIR = Path(os.environ.get("TIMBRE_SHARED_DIR", REPO_DIR.parent / "shared"))
DEFAULT_CLIP = SHARED_DIR / "data" / "voices" / "mixtures" / "long_us2_speech_180s.flac"
SAMPLE_RATE_16K = 16000
INDEX_ROWS = 20_000
CONTENT_DIM_V2 = 768
KIT_VERSION = 1  # bump when the files below change


@dataclass(frozen=True)
class Kit:
    """Paths of the random-weight, real-size files a benchmark converts with."""

    pretrained_dir: Path
    model_path: Path
    index_path: Path


def ensure_kit(out_dir: Path = OUT_DIR) -> Kit:
    """Write (once; cached under ``out_dir``) HuBERT-base, RMVPE, a v2 40k f0 voice and an IVF index.

    Weights are random (real ones cannot be fetched here) but every tensor has its real shape,
    so the arithmetic per second of audio is the real one.
    """
    from infer.synthesizer import SynthConfig
    from tests.fakes import (
        hubert_config,
        write_hubert_checkpoint,
        write_rmvpe_checkpoint,
        write_voice_model,
    )

    root = out_dir / f"kit_v{KIT_VERSION}"
    pretrained = root / "pretrained"
    hubert = pretrained / "hubert_base.pt"
    rmvpe = pretrained / "rmvpe.pt"
    model = root / "bench_v2_40k.pth"
    index = root / "added_IVF512_Flat_nprobe_1_bench_v2.index"
    if not hubert.is_file():
        write_hubert_checkpoint(hubert, hubert_config("v2", tiny=False))
    if not rmvpe.is_file():
        write_rmvpe_checkpoint(rmvpe, tiny=False)
    if not model.is_file():
        write_voice_model(model, SynthConfig.preset("v2", 40000, True), name="bench")
    if not index.is_file():
        _write_random_index(index)
    return Kit(pretrained_dir=pretrained, model_path=model, index_path=index)


def _write_random_index(path: Path) -> None:
    """An ``IVF512,Flat`` index (nprobe 1) of 20k standard-normal 768-d rows, like RVC's recipe."""
    from train.index import build_index, write_index

    rows = np.random.default_rng(0).standard_normal((INDEX_ROWS, CONTENT_DIM_V2)).astype(np.float32)
    write_index(build_index(rows, seed=0), path)


def load_input(duration_s: float, clip: Path = DEFAULT_CLIP) -> np.ndarray:
    """(duration_s * 16000,) float32: the corpus clip at 16 kHz, repeated to length."""
    from infer.audio import load_audio

    audio = load_audio(clip, SAMPLE_RATE_16K)
    n = round(duration_s * SAMPLE_RATE_16K)
    reps = -(-n // audio.shape[0])
    return np.ascontiguousarray(np.tile(audio, reps)[:n], dtype=np.float32)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """Resident set size now (VmRSS), 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); True if it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. ``'3.61 4.20 4.22'``."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine_line(threads: int) -> str:
    """CPU model, core count, torch version and threads, for a report header."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads, "
        f"THP_MEM_ALLOC_ENABLE={thp}"
    )


def median(values: list[float]) -> float:
    """Median, NaN for an empty list."""
    return statistics.median(values) if values else float("nan")


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - test|^2) over the common length; inf when equal."""
    n = min(reference.shape[0], test.shape[0])
    ref = reference[:n].astype(np.float64)
    err = ref - test[:n].astype(np.float64)
    noise = float(np.sum(err * err))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(float(np.sum(ref * ref)) / noise))
