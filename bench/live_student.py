"""The live student against its teacher: latency, one-thread speed, and quality on held-out clips.

    python bench/live_student.py --quick                 # a few minutes: tiny teacher, short budget
    python bench/live_student.py --train-seconds 1800    # the figures: 30 min of student training

Steps: train a teacher voice on ``--voice``'s sentences 021+ of ``../shared/data/voices`` (offline:
whisper-tiny-en content, pm F0, from scratch, ``--teacher-steps``), then the ``live-student`` stage
within ``--train-seconds`` (a wall-clock budget: training stops there and keeps its last
checkpoint) or ``--train-steps``. Then:

* algorithmic latency: block + lookahead from the student's config (ms);
* real-time factor on one thread: compute seconds per second of audio (goal <= 0.36, LLVC's 2.8x);
* on sentences 001-020 of the other voices (``--sources``), converted by the teacher (the
  pipeline) and by the student (streamed): log-mel L1 of student to teacher, speaker similarity
  (resemblyzer) of each to the target voice's own 001-020 clips, and CER (Whisper tiny.en) of each.

Writes ``bench/out/live_student.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from _common import OUT_DIR, REPO_DIR, SHARED_DIR

VOICES = SHARED_DIR / "data" / "voices"
HELDOUT = tuple(f"{i:03d}.flac" for i in range(1, 21))


def _train_teacher(args: argparse.Namespace, work: Path, models: Path) -> None:
    dataset = work.parent / "dataset"
    dataset.mkdir(parents=True, exist_ok=True)
    for clip in sorted((VOICES / args.voice / "speech").glob("*.flac")):
        if clip.name not in HELDOUT and not (dataset / clip.name).exists():
            (dataset / clip.name).symlink_to(clip)
    command = [
        sys.executable, "-m", "train", "run", "--name", args.name, "--dataset", str(dataset),
        "--work-dir", str(work), "--models-dir", str(models), "--size", args.teacher_size,
        "--sample-rate", "16000" if args.teacher_size == "tiny" else "40000",
        "--content-encoder", "whisper-tiny-en", "--f0-method", "pm", "--from-scratch",
        "--epochs", "1000", "--max-steps", str(args.teacher_steps), "--no-report", "--workers", "1",
    ]  # fmt: skip
    if args.pretrained_dir:
        command += ["--pretrained-dir", str(args.pretrained_dir)]
    subprocess.run(command, cwd=REPO_DIR, check=True)


def _train_student(args: argparse.Namespace, work: Path) -> float:
    """Pairs, then training within the budget; returns the seconds spent (pairs included)."""
    from dataclasses import replace

    from train.live_student import stage_live_student
    from train.settings import TrainSettings

    settings = TrainSettings.load(work)
    settings = replace(settings, use_live_student=True, live_student_steps=args.train_steps)
    started = time.monotonic()
    from infer.student import StudentConfig

    size = args.student_size or ("tiny" if args.teacher_size == "tiny" else "default")
    stage_live_student(
        settings,
        progress=None,
        should_stop=None,
        train_budget_s=args.train_seconds or None,
        student_config=StudentConfig.tiny() if size == "tiny" else StudentConfig(),
    )
    return time.monotonic() - started


def _rtf(student: object, block: int, seconds: float) -> float:
    import torch

    from infer.student import StudentEngine

    torch.set_num_threads(1)
    engine = StudentEngine(student, block)  # type: ignore[arg-type]
    audio = (np.random.default_rng(0).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    for i in range(10):
        engine.process(audio[i * block : (i + 1) * block])
    count = audio.shape[0] // block
    started = time.perf_counter()
    for i in range(count):
        engine.process(audio[i * block : (i + 1) * block])
    return (time.perf_counter() - started) / (count * block / 16000)


def _quality(args: argparse.Namespace, work: Path, student: object) -> dict[str, object]:
    import torch

    from infer.audio import load_audio
    from infer.errors import AssetError
    from infer.metrics import character_error_rate, speaker_embedding, speaker_similarity, transcribe
    from infer.params import ConvertParams
    from infer.pipeline import Converter, Resources, load_voice
    from infer.reference_metrics import log_mel, log_mel_l1
    from infer.student import StudentEngine, stream_student_array

    torch.set_num_threads(args.threads)
    pth = work / "weights" / f"{args.name}.pth"
    resources = Resources(
        content_encoder="whisper-tiny-en",
        **({"pretrained_dir": args.pretrained_dir} if args.pretrained_dir else {}),
    )
    converter = Converter(load_voice(pth), resources)
    target_clips = [load_audio(VOICES / args.voice / "speech" / n, 16000) for n in HELDOUT[: args.clips]]
    try:
        target = np.mean([speaker_embedding(c, 16000) for c in target_clips], axis=0)
    except AssetError as exc:
        logging.warning("no speaker similarity: %s", exc)
        target = None
    rows = []
    for source_voice in args.sources:
        texts = dict(
            line.split("\t", 1)
            for line in (VOICES / source_voice / "speech" / "transcripts.tsv").read_text().splitlines()[1:]
        )
        for name in HELDOUT[: args.clips]:
            source = load_audio(VOICES / source_voice / "speech" / name, 16000)
            teacher = converter.convert(
                source, ConvertParams(f0_method="pm", output_sample_rate=16000, seed=0)
            ).audio
            streamed = stream_student_array(StudentEngine(student), source)  # type: ignore[arg-type]
            row: dict[str, object] = {
                "source": f"{source_voice}/{name}",
                "mel_l1_to_teacher": log_mel_l1(log_mel(streamed, 16000), log_mel(teacher, 16000)),
            }
            for label, audio in (("student", streamed), ("teacher", teacher)):
                if target is not None:
                    try:
                        embedding = speaker_embedding(audio, 16000)
                    except ValueError as exc:  # no speech left after the VAD: left out of the mean
                        logging.warning("%s %s/%s: %s", label, source_voice, name, exc)
                    else:
                        row[f"similarity_{label}"] = speaker_similarity(embedding, target)
                try:
                    row[f"cer_{label}"] = character_error_rate(transcribe(audio), texts[name])
                except AssetError as exc:
                    logging.warning("no CER: %s", exc)
            rows.append(row)
    keys = sorted({k for r in rows for k in r if k != "source"})
    means = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    return {"per_clip": rows, "mean": means}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny teacher, 60 s student budget, 3 clips")
    parser.add_argument("--voice", default="us1", help="the target voice (corpus folder)")
    parser.add_argument("--sources", nargs="+", default=["us2", "kal"], help="voices converted into it")
    parser.add_argument("--teacher-size", choices=("tiny", "full"), default="full")
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument(
        "--student-size",
        choices=("tiny", "default"),
        default=None,
        help="the student network (default: as the teacher)",
    )
    parser.add_argument("--train-seconds", type=float, default=1800.0, help="student budget (0 = steps only)")
    parser.add_argument("--train-steps", type=int, default=100_000, help="student step cap")
    parser.add_argument("--clips", type=int, default=20, help="held-out sentences per source voice")
    parser.add_argument("--block", type=int, default=0, help="live block in samples (0 = the default)")
    parser.add_argument("--threads", type=int, default=1, help="threads for training and the teacher")
    parser.add_argument("--pretrained-dir", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=OUT_DIR / "live_student")
    args = parser.parse_args(argv)
    if args.quick:
        args.teacher_size, args.teacher_steps, args.clips = "tiny", 60, 3
        args.train_seconds, args.sources = min(args.train_seconds, 60.0), args.sources[:1]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.name = f"bench{args.voice}{'quick' if args.quick else ''}"
    work = args.work / args.name / "work"
    models = args.work / args.name / "models"
    import torch

    torch.set_num_threads(args.threads)
    if not (work / "weights" / f"{args.name}.pth").is_file():
        _train_teacher(args, work, models)
    train_s = _train_student(args, work)

    from infer.student import DEFAULT_BLOCK_SAMPLES, STUDENT_FILENAME, load_student

    loaded = load_student(work / STUDENT_FILENAME)
    student = loaded.build()
    block = args.block or DEFAULT_BLOCK_SAMPLES
    result = {
        "voice": args.voice,
        "student_config": loaded.config.to_dict(),
        "student_steps": loaded.metadata.get("steps"),
        "student_train_s": round(train_s, 1),
        "teacher": {"size": args.teacher_size, "steps": args.teacher_steps},
        "block_samples": block,
        "algorithmic_latency_ms": 1000 * loaded.config.algorithmic_latency_s(block),
        "rtf_one_thread": _rtf(student, block, 3.0 if args.quick else 20.0),
        "quality": _quality(args, work, student),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / ("live_student_quick.json" if args.quick else "live_student.json")
    out.write_text(json.dumps(result, indent=2))
    mean = result["quality"]["mean"]  # type: ignore[index]
    print(f"\nlive student of {args.voice}: {result['student_steps']} steps in {train_s:.0f} s ({out})\n")
    print("| measure | student | teacher |\n|---|---|---|")
    print(f"| algorithmic latency (ms) | {result['algorithmic_latency_ms']:.1f} | - |")
    print(f"| compute per audio second, 1 thread | {result['rtf_one_thread']:.3f} | - |")
    print(f"| log-mel L1 to the teacher | {mean.get('mel_l1_to_teacher', float('nan')):.3f} | 0 |")
    for key, label in (("similarity", "speaker similarity to target"), ("cer", "CER")):
        student_value = mean.get(f"{key}_student", float("nan"))
        teacher_value = mean.get(f"{key}_teacher", float("nan"))
        print(f"| {label} | {student_value:.3f} | {teacher_value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
