"""VITS training speed: steps/s and seconds per epoch for RVC's real v2 40 kHz model and the tiny one.

Usage::

    python bench/train_speed.py [--steps 3] [--warmup 1] [--threads 2] [--device cpu]
                                [--work-dir DIR] [--skip-full]

Data: ``us1/speech`` of the shared voice corpus (60 files, 182 s at 16 kHz), prepared with
:func:`train.dataset.prepare_dataset` at the model rate (RVC's 3.7 s segments) with F0 from the
``pm`` method. The content features are seeded random vectors of the right width and frame count
(768-dim for v2, 256 for the tiny v1), since the real HuBERT weights are not available offline;
they cost the trainer exactly what real ones do.

Each configuration trains with batch 4 from scratch: ``--warmup`` steps are run and discarded,
then ``--steps`` steps are timed one by one (data loading excluded, as in the trainer's own
steps/s) and the median is reported. An epoch is the number of length-bucketed batches of the
prepared set (rank 0 of 1), and seconds per epoch = batches * median step time; the last column
scales that to 5 minutes of audio.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_DIR = Path(__file__).resolve().parents[1]
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from infer.pitch import f0_to_coarse, get_pitch_extractor  # noqa: E402
from train.dataset import collect_dataset, prepare_dataset  # noqa: E402
from train.features import (  # noqa: E402
    F0_COARSE_DIRNAME,
    F0_HZ_DIRNAME,
    WAVS_16K_DIRNAME,
    feature_dir,
    list_training_examples,
    read_segment_16k,
)
from train.vits import VitsTrainConfig, VitsTrainer  # noqa: E402

SHARED_DIR = Path(os.environ.get("TIMBRE_SHARED_DIR", REPO_DIR.parent / "shared"))
VOICE_DIR = SHARED_DIR / "data" / "voices" / "us1" / "speech"
FIVE_MINUTES_S = 300.0
BATCH_SIZE = 4


def prepare(work: Path, sample_rate: int, version: str) -> None:
    """Segments at ``sample_rate``, pm F0 and random content features (skipped when present)."""
    if list((work / "0_gt_wavs").glob("*.wav")) and feature_dir(work, version).is_dir():
        return
    manifest = collect_dataset(VOICE_DIR, work)
    prepare_dataset(manifest, work, sample_rate=sample_rate)
    content_dim = 256 if version == "v1" else 768
    content_dir = feature_dir(work, version)
    for folder in (content_dir, work / F0_COARSE_DIRNAME, work / F0_HZ_DIRNAME):
        folder.mkdir(parents=True, exist_ok=True)
    extractor = get_pitch_extractor("pm")
    rng = np.random.default_rng(0)
    for path in sorted((work / WAVS_16K_DIRNAME).glob("*.wav")):
        audio = read_segment_16k(path)
        f0_hz = np.asarray(extractor.extract(audio, p_len=len(audio) // 160), dtype=np.float32)
        np.save(work / F0_HZ_DIRNAME / f"{path.stem}.npy", f0_hz)
        np.save(work / F0_COARSE_DIRNAME / f"{path.stem}.npy", f0_to_coarse(f0_hz).astype(np.int64))
        frames = (len(audio) - 400) // 320 + 1
        np.save(
            content_dir / f"{path.stem}.npy", rng.standard_normal((frames, content_dim)).astype(np.float32)
        )


def measure(label: str, config: VitsTrainConfig, work: Path, warmup: int, steps: int) -> dict[str, object]:
    """Time ``steps`` training steps after ``warmup``; returns one table row."""
    examples = list_training_examples(work, config.version, use_f0=config.use_f0)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = VitsTrainer(config, examples, run_dir=Path(run_dir))
        batches = trainer.batches(1)
        times: list[float] = []
        for i in range(warmup + steps):
            batch = next(batches)
            if batch is None:
                raise RuntimeError("unexpected skipped batch")
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            metrics = trainer.train_step(batch)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - started)
            if not np.isfinite(metrics["loss_gen_all"]):
                raise RuntimeError(f"{label}: non-finite loss at step {i}")
        per_epoch = trainer.batches_per_epoch()
        duration_s = trainer.dataset.duration_s
        params_g = sum(p.numel() for p in trainer.net_g.parameters())
        params_d = sum(p.numel() for p in trainer.net_d.parameters())
    step_s = statistics.median(times)
    return {
        "config": label,
        "params": f"{params_g / 1e6:.1f}M / {params_d / 1e6:.1f}M",
        "segment": f"{config.segment_samples} ({config.segment_frames} fr)",
        "step_s": step_s,
        "steps_per_s": 1.0 / step_s,
        "batches": per_epoch,
        "epoch_s": per_epoch * step_s,
        "epoch_5min_s": per_epoch * step_s * FIVE_MINUTES_S / duration_s,
        "segments": len(examples),
        "duration_s": duration_s,
        "measured": f"{steps} (after {warmup})",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16 (CUDA only)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep prepared data here between runs")
    parser.add_argument("--skip-full", action="store_true", help="only the tiny configuration")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="timbre-train-speed-"))
    common = {
        "batch_size": BATCH_SIZE,
        "device": args.device,
        "precision": args.precision,
        "use_pretrained": False,
    }
    runs = [("tiny v1 16k", VitsTrainConfig.tiny(**common), root / "tiny16k", 16000, "v1")]
    if not args.skip_full:
        full = VitsTrainConfig(version="v2", sample_rate=40000, use_f0=True, **common)
        runs.insert(0, ("v2 40k (real size)", full, root / "v2_40k", 40000, "v2"))
    rows = []
    for label, config, work, sample_rate, version in runs:
        prepare(work, sample_rate, version)
        rows.append(measure(label, config, work, args.warmup, args.steps))
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"\nVITS training speed on {device} ({args.precision}), torch {torch.__version__}, "
        f"{args.threads} threads, batch {BATCH_SIZE}, from scratch; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"epoch = bucketed batches of us1 speech prepared at the model rate "
        f"({rows[0]['segments']} segments, {rows[0]['duration_s']:.0f} s)\n"
    )
    header = (
        "config",
        "params G / D",
        "segment samples",
        "timed steps",
        "s/step (median)",
        "steps/s",
        "batches/epoch",
        "s/epoch",
        "s/epoch per 5 min audio",
    )
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['params']} | {r['segment']} | {r['measured']} | {r['step_s']:.3f} | "
            f"{r['steps_per_s']:.3f} | {r['batches']} | {r['epoch_s']:.0f} | {r['epoch_5min_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
