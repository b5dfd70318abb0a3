"""Quality benchmark: train on one voice on CPU for a fixed time, convert other voices, print the metrics.

Usage::

    python bench/quality.py [--budget-s 1200] [--size tiny] [--sample-rate 16000] [--threads 2]
                            [--diffusion-steps 300] [--distill-steps 100] [--out bench/out/quality]

The defaults are the stated budget: 20 minutes (1200 s wall clock) of VITS training of the
``tiny`` networks at 16 kHz (the corpus' rate), batch 4, on 2 CPU threads. The full RVC networks
are out of reach of a CPU budget: on the shared 2-core development machine one step of the
full v2 40 kHz generator took 20 to 80 s, so 20 minutes would be a few dozen steps.

What it does:

1. trains ``us1`` (all of ``voices/us1/speech``, 182 s) with the offline ``whisper-tiny-en`` content
   encoder (HuBERT weights cannot be downloaded here), from scratch (no RVC base files), on CPU
   with ``--threads`` torch threads, for ``--budget-s`` seconds of VITS training (wall clock;
   the trainer is stopped by its ``should_stop`` callback, which writes a checkpoint and an
   export first). Preparation, feature extraction and the index are not counted in the budget.
   With ``--diffusion-steps N`` the diffusion teacher is then trained for N steps (and with
   ``--distill-steps M`` the LCM head for M steps);
2. makes the report card (held-out us1 clips and probe phrases, every saved checkpoint) and
   exports the model;
3. converts ``us2`` and ``en1`` speech (three parallel sentences each) and singing (two takes each)
   with the final model, for sampler ``off`` and each diffusion sampler the model has, with the
   key shift that moves the source's median F0 to us1's (whole semitones), seed 0, RVC's
   default knobs, F0 method fcpe;
4. prints one row per clip and sampler: similarity of the output to us1 (cosine of resemblyzer
   d-vectors, us1 = mean d-vector of 8 us1 clips) and to the source clip, whether the target
   wins, CER of the Whisper tiny.en transcription (speech: the transcript; singing: the lyrics,
   when the take has words) and F0 RMSE in cents against the shifted source F0 (pm tracks);
   then the means per sampler. Results are also written to ``<out>/quality.json``.

Every run starts from an empty ``<out>/work`` folder, so numbers are those of the stated budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_DIR = Path(__file__).resolve().parents[1]
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

SHARED_DIR = Path(os.environ.get("TIMBRE_SHARED_DIR", REPO_DIR.parent / "shared"))
VOICES_DIR = SHARED_DIR / "data" / "voices"
TARGET_VOICE = "us1"
SOURCE_VOICES = ("us2", "en1")
SPEECH_CLIPS = ("004", "009", "017")
SINGING_TAKES = ("a06_melody_la_na", "a07_melody_lyrics")
TARGET_EMBEDDING_FILES = tuple(f"{i:03d}" for i in range(21, 29))
CONVERT_F0_METHOD = "fcpe"
METRIC_PITCH_METHOD = "pm"
SAMPLE_RATE_16K = 16000
DIFFUSION_SAMPLERS = (("ddpm", 20), ("ddim", 10), ("lcm", 2))
MODEL_NAME = "bench_us1"

log = logging.getLogger("bench.quality")


def _probe_clips() -> list[dict[str, Any]]:
    """The source clips: speech with its transcript, singing with its lyrics (or None)."""
    clips = []
    for voice in SOURCE_VOICES:
        texts = dict(
            line.split("\t", 1)
            for line in (VOICES_DIR / voice / "speech" / "transcripts.tsv").read_text().splitlines()[1:]
        )
        for number in SPEECH_CLIPS:
            clips.append(
                {
                    "id": f"{voice}/speech/{number}",
                    "kind": "speech",
                    "path": VOICES_DIR / voice / "speech" / f"{number}.flac",
                    "text": texts[f"{number}.flac"].strip(),
                }
            )
        rows = (VOICES_DIR / voice / "singing" / "index.tsv").read_text().splitlines()
        header = rows[0].split("\t")
        for row in rows[1:]:
            values = dict(zip(header, row.split("\t"), strict=False))
            take = values["file"].removesuffix(".flac")
            if take in SINGING_TAKES:
                lyrics = values.get("lyrics", "").replace("-", "").strip()
                clips.append(
                    {
                        "id": f"{voice}/singing/{take}",
                        "kind": "singing",
                        "path": VOICES_DIR / voice / "singing" / f"{take}.flac",
                        "text": lyrics or None,
                    }
                )
    return clips


def _median_f0(f0_hz: np.ndarray) -> float:
    voiced = f0_hz[f0_hz > 0]
    return float(np.median(voiced)) if voiced.size else math.nan


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def train(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Stages up to export, the fit stage stopped after the budget; returns what was spent.

    ``<out>/spent.json`` is rewritten after each group of stages; with ``--resume`` the groups
    it lists are skipped (for a run interrupted after training).
    """
    from infer.errors import Cancelled
    from train.pipeline import TrainSettings, run_stages

    work = out / "work"
    spent_path = out / "spent.json"
    if args.resume:
        spent = json.loads(spent_path.read_text())
        settings = TrainSettings.load(work)
    else:
        if work.exists():
            shutil.rmtree(work)
        use_diffusion = args.diffusion_steps > 0
        settings = TrainSettings(
            name=MODEL_NAME,
            work_dir=work,
            models_dir=out / "models",
            pretrained_dir=out / "pretrained",
            dataset=(str(VOICES_DIR / TARGET_VOICE / "speech"),),
            sample_rate=args.sample_rate,
            version="v2",
            f0_method=CONVERT_F0_METHOD,
            content_encoder="whisper-tiny-en",
            epochs=10_000,
            batch_size=args.batch_size,
            save_every_epochs=args.save_every,
            use_pretrained=False,
            size=args.size,
            use_diffusion=use_diffusion,
            use_distillation=use_diffusion and args.distill_steps > 0,
            diffusion_epochs=10_000,
            diffusion_max_steps=args.diffusion_steps,
            distill_epochs=10_000,
            distill_max_steps=args.distill_steps,
            device="cpu",
            workers=2,
        )
        spent = {
            "settings": settings.to_dict(),
            "wall_s": {},
            "budget_s": args.budget_s,
            "threads": args.threads,
        }
    later = ["index"] + (["diffusion"] if settings.use_diffusion else [])
    later += ["distill"] if settings.use_distillation else []
    for group in (["prepare", "extract"], ["fit"], later, ["report", "export"]):
        key = "+".join(group)
        if key in spent["wall_s"]:
            continue
        started = time.perf_counter()
        if group == ["fit"]:
            deadline = time.monotonic() + spent["budget_s"]
            try:
                run_stages(settings, group, should_stop=lambda end=deadline: time.monotonic() >= end)
            except Cancelled:
                log.info("fit stopped after the budget of %d s", spent["budget_s"])
        else:
            for result in run_stages(settings, group):
                log.info("%s: %s", result.stage, result.summary)
        spent["wall_s"][key] = round(time.perf_counter() - started, 1)
        spent_path.write_text(json.dumps(spent, indent=2))
    return spent


def evaluate(out: Path) -> list[dict[str, Any]]:
    """Convert every probe clip with every sampler the model has and measure the outputs."""
    from infer.audio import load_audio, resample
    from infer.catalog import find_model
    from infer.metrics import (
        character_error_rate,
        f0_rmse_cents,
        shift_f0,
        speaker_embedding,
        speaker_similarity,
        transcribe,
    )
    from infer.pipeline import ConvertParams, Resources, convert, load_voice
    from infer.pitch import get_pitch_extractor

    entry = find_model(out / "models", MODEL_NAME)
    voice = load_voice(entry.pth_path, entry.index_path)
    resources = Resources(pretrained_dir=out / "pretrained")
    samplers = [("off", 1)]
    if (entry.folder / "diffusion_teacher.pt").is_file():
        samplers += [s for s in DIFFUSION_SAMPLERS if s[0] != "lcm"]
    if (entry.folder / "diffusion_lcm.pt").is_file():
        samplers += [s for s in DIFFUSION_SAMPLERS if s[0] == "lcm"]
    pitch = get_pitch_extractor(METRIC_PITCH_METHOD)

    target_clips = [
        load_audio(VOICES_DIR / TARGET_VOICE / "speech" / f"{n}.flac", SAMPLE_RATE_16K)
        for n in TARGET_EMBEDDING_FILES
    ]
    mean_embedding = np.mean([speaker_embedding(c, SAMPLE_RATE_16K) for c in target_clips], axis=0)
    target_embedding = mean_embedding / np.linalg.norm(mean_embedding)
    target_median = _median_f0(np.concatenate([pitch.extract(c) for c in target_clips]))

    rows = []
    for clip in _probe_clips():
        source = load_audio(clip["path"], SAMPLE_RATE_16K)
        source_f0 = pitch.extract(source)
        source_embedding = speaker_embedding(source, SAMPLE_RATE_16K)
        shift = float(round(12 * math.log2(target_median / _median_f0(source_f0))))
        for sampler, steps in samplers:
            params = ConvertParams(
                pitch_shift_semitones=shift,
                f0_method=CONVERT_F0_METHOD,
                seed=0,
                sampler=sampler,
                diffusion_steps=steps,
            )
            started = time.perf_counter()
            result = convert(source, voice, params, resources=resources)
            convert_s = time.perf_counter() - started
            output = resample(result.audio, result.sample_rate, SAMPLE_RATE_16K)
            try:
                embedding = speaker_embedding(output, SAMPLE_RATE_16K)
            except ValueError:
                embedding = None
            to_target = speaker_similarity(embedding, target_embedding) if embedding is not None else None
            to_source = speaker_similarity(embedding, source_embedding) if embedding is not None else None
            transcript = transcribe(output) if clip["text"] else None
            rows.append(
                {
                    "clip": clip["id"],
                    "kind": clip["kind"],
                    "sampler": sampler,
                    "steps": steps if sampler != "off" else None,
                    "pitch_shift_semitones": shift,
                    "similarity_to_target": to_target,
                    "similarity_to_source": to_source,
                    "source_to_target": speaker_similarity(source_embedding, target_embedding),
                    "cer": character_error_rate(transcript, clip["text"]) if transcript is not None else None,
                    "f0_rmse_cents": f0_rmse_cents(pitch.extract(output), shift_f0(source_f0, shift)),
                    "transcript": transcript,
                    "convert_s": round(convert_s, 2),
                }
            )
            log.info("%s %s: %s", clip["id"], sampler, rows[-1])
    return rows


def print_tables(rows: list[dict[str, Any]], spent: dict[str, Any], report: dict[str, Any]) -> None:
    """The per-clip table, the per-sampler means and the report card's checkpoints."""
    settings = spent["settings"]
    budget = report.get("budget", {})
    print(
        f"Target {TARGET_VOICE} ({settings['size']} model, {settings['sample_rate']} Hz, "
        f"{settings['content_encoder']}, from scratch, batch {settings['batch_size']}); "
        f"VITS budget {spent['budget_s']} s on CPU with {spent['threads']} threads: "
        f"{budget.get('trained_steps')} steps, {budget.get('trained_epochs')} epochs "
        f"(fit wall {spent['wall_s'].get('fit')} s; other stages {spent['wall_s']})"
    )
    print()
    print("| clip | sampler | key | sim to target | sim to source | target wins | CER | F0 RMSE (cents) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        to_t, to_s = row["similarity_to_target"], row["similarity_to_source"]
        wins = "-" if to_t is None or to_s is None else ("yes" if to_t > to_s else "no")
        print(
            f"| {row['clip']} | {row['sampler']} | {row['pitch_shift_semitones']:+.0f} | "
            f"{_fmt(to_t, '.3f')} | {_fmt(to_s, '.3f')} | {wins} | {_fmt(row['cer'], '.3f')} | "
            f"{_fmt(row['f0_rmse_cents'], '.0f')} |"
        )
    print()
    print("| sampler | kind | clips | sim to target | sim to source | target wins | CER | F0 RMSE (cents) |")
    print("|---|---|---|---|---|---|---|---|")
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        for kind in ("speech", "singing"):
            chosen = [r for r in rows if r["sampler"] == sampler and r["kind"] == kind]
            if not chosen:
                continue

            def mean(key: str, rows_: list[dict[str, Any]] = chosen) -> float | None:
                values = [r[key] for r in rows_ if r[key] is not None and math.isfinite(r[key])]
                return float(np.mean(values)) if values else None

            wins = sum(
                1
                for r in chosen
                if r["similarity_to_target"] is not None
                and r["similarity_to_source"] is not None
                and r["similarity_to_target"] > r["similarity_to_source"]
            )
            print(
                f"| {sampler} | {kind} | {len(chosen)} | {_fmt(mean('similarity_to_target'), '.3f')} | "
                f"{_fmt(mean('similarity_to_source'), '.3f')} | {wins}/{len(chosen)} | "
                f"{_fmt(mean('cer'), '.3f')} | {_fmt(mean('f0_rmse_cents'), '.0f')} |"
            )
    source_to_target = float(np.mean([r["source_to_target"] for r in rows if r["sampler"] == "off"]))
    print(f"\n(unconverted sources vs {TARGET_VOICE}: mean similarity {source_to_target:.3f})")
    print("\nReport card (held-out us1 clips + probe phrases, sampler off):")
    from train.report import SUMMARY_HEADERS, report_summary

    print("| " + " | ".join(SUMMARY_HEADERS) + " |")
    print("|" + "---|" * len(SUMMARY_HEADERS))
    for line in report_summary(report):
        print("| " + " | ".join(line) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--budget-s", type=int, default=1200, help="wall-clock seconds of VITS training")
    parser.add_argument("--size", choices=("full", "tiny"), default="tiny")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--save-every", type=int, default=3, help="epochs between saved checkpoints")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--diffusion-steps", type=int, default=300, help="teacher steps (0 = no diffusion)")
    parser.add_argument("--distill-steps", type=int, default=100, help="LCM steps after the teacher")
    parser.add_argument("--out", type=Path, default=REPO_DIR / "bench" / "out" / "quality")
    parser.add_argument("--resume", action="store_true", help="continue a run interrupted after training")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    spent = train(args, out)
    rows = evaluate(out)
    report = json.loads((out / "models" / MODEL_NAME / "report.json").read_text())
    (out / "quality.json").write_text(json.dumps({"spent": spent, "rows": rows}, indent=2))
    print_tables(rows, spent, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
