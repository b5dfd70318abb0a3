"""Refinement against ground truth: every sampler of one small voice model, scored on real recordings.

Trains one small voice model of the corpus on CPU (tiny VITS on ``us1`` sentences 021-060, a
random-weight HuBERT as in the CI test, pm F0), then on its latents an eps teacher with its LCM
student and an EDM teacher with its consistency (CM) and ACDD students. Every row below uses the
same VITS model, seeds and inputs:

* reconstruction: the voice's own held-out sentences 001-004 converted into itself and scored
  against the original recording (log-mel L1, MCD; frame by frame);
* parallel conversion: ``us2``'s sentences 001-004 (the same text) converted into ``us1`` and scored
  against ``us1``'s real recording (DTW-aligned MCD, resemblyzer speaker similarity to it).

Network evaluations count denoiser forwards per refine call (a guided pair counts once; EDM's
Heun with N steps takes 2N - 1). One torch thread throughout (the machine is shared).

    python bench/refine_quality.py                 # train (cached under bench/out) and evaluate
    python bench/refine_quality.py --vits-steps 300 --teacher-steps 300 ...   # a quick look
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parents[1]
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from bench._common import OUT_DIR, SHARED_DIR, median  # noqa: E402

VOICES = SHARED_DIR / "data" / "voices"
TRAIN_FILES = [f"{i:03d}.flac" for i in range(21, 61)]
EVAL_FILES = [f"{i:03d}.flac" for i in range(1, 5)]
SOURCE_VOICE = "us2"
ROOT = OUT_DIR / "refine_quality"
NAME = "rq"

log = logging.getLogger("bench.refine_quality")


@dataclass(frozen=True)
class Row:
    label: str
    family: str  # "eps" or "edm": which model folder
    sampler: str
    steps: int = 1
    start: str = "noise"
    strength: float = 0.5


def train(args: argparse.Namespace) -> dict[str, Path]:
    """Train (or reuse) the model and both head families; returns {'eps': folder, 'edm': folder}."""
    from tests.fakes import hubert_config, write_hubert_checkpoint
    from train.pipeline import TrainSettings, run_stages

    folders = {"eps": ROOT / "models_eps" / NAME, "edm": ROOT / "models_edm" / NAME}
    budget = json.dumps(
        [args.voice, args.vits_steps, args.teacher_steps, args.student_steps, args.acdd_steps]
    )
    stamp = ROOT / "budget.json"
    cached = stamp.is_file() and stamp.read_text() == budget
    if cached and all((f / f"{NAME}.pth").is_file() for f in folders.values()) and not args.retrain:
        return folders
    shutil.rmtree(ROOT, ignore_errors=True)
    pretrained = ROOT / "pretrained"
    if not (pretrained / "hubert_base.pt").is_file():
        write_hubert_checkpoint(pretrained / "hubert_base.pt", hubert_config("v2"))
    dataset = ROOT / "dataset"
    dataset.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_FILES:
        link = dataset / name
        if not link.exists():
            link.symlink_to(VOICES / args.voice / "speech" / name)
    eps = TrainSettings(
        name=NAME,
        work_dir=ROOT / "work",
        models_dir=ROOT / "models_eps",
        pretrained_dir=pretrained,
        dataset=(str(dataset),),
        sample_rate=40000,
        f0_method="pm",
        size="tiny",
        epochs=100_000,
        batch_size=4,
        save_every_epochs=10_000,
        max_steps=args.vits_steps,
        use_pretrained=False,
        use_diffusion=True,
        use_distillation=True,
        diffusion_epochs=100_000,
        diffusion_max_steps=args.teacher_steps,
        distill_epochs=100_000,
        distill_max_steps=args.student_steps,
        cm_epochs=100_000,
        cm_max_steps=args.student_steps,
        acdd_epochs=100_000,
        acdd_max_steps=args.acdd_steps,
        device="cpu",
        workers=1,
        use_report=False,
    )
    edm = replace(
        eps,
        models_dir=ROOT / "models_edm",
        diffusion_parameterisation="edm",
        use_distillation=False,
        use_cm=True,
        use_acdd=True,
    )
    for settings, stages in (
        (eps, ["prepare", "extract", "fit", "index", "diffusion", "distill", "export"]),
        (edm, ["diffusion", "cm", "acdd", "export"]),
    ):
        started = time.perf_counter()
        results = run_stages(settings, stages)
        for result in results:
            log.info("%s: %s (%.0f s)", result.stage, result.summary, result.elapsed_s)
        log.info("%s chain took %.0f s", settings.diffusion_parameterisation, time.perf_counter() - started)
    stamp.write_text(budget)
    return folders


def rows(args: argparse.Namespace) -> list[Row]:
    out = [Row("off", "eps", "off"), Row(f"DDPM-{args.ddpm_steps}", "eps", "ddpm", args.ddpm_steps)]
    out += [Row(f"DDIM-{k}", "eps", "ddim", k) for k in (1, 2, 4, 50)]
    out += [Row(f"LCM-{k}", "eps", "lcm", k) for k in (1, 2, 4)]
    out += [Row(f"EDM-Heun-{args.heun_steps}", "edm", "edm", args.heun_steps), Row("CM-1", "edm", "cm", 1)]
    out += [Row("CM-2", "edm", "cm", 2), Row("ACDD-1 s=0.45", "edm", "acdd", 1, "shallow", 0.45)]
    for s in args.strengths:
        out += [
            Row(f"DDIM-4 s={s}", "eps", "ddim", 4, "shallow", s),
            Row(f"LCM-4 s={s}", "eps", "lcm", 4, "shallow", s),
            Row(f"EDM-Heun-{args.heun_steps} s={s}", "edm", "edm", args.heun_steps, "shallow", s),
            Row(f"CM-1 s={s}", "edm", "cm", 1, "shallow", s),
            Row(f"ACDD-1 s={s}", "edm", "acdd", 1, "shallow", s),
        ]
    return out


def evaluate(folders: dict[str, Path], args: argparse.Namespace) -> list[dict[str, float | str | int]]:
    from infer.audio import load_audio, resample
    from infer.diffusion.refine import RefineParams, network_evaluations
    from infer.metrics import dtw_mcd, log_mel, log_mel_l1, mcd, mel_cepstrum, speaker_embedding
    from infer.pipeline import ConvertParams, Resources, convert, load_voice

    voices = {family: load_voice(folder / f"{NAME}.pth") for family, folder in folders.items()}
    resources = Resources(pretrained_dir=ROOT / "pretrained")
    own = [load_audio(VOICES / args.voice / "speech" / n, 16000) for n in EVAL_FILES]
    other = [load_audio(VOICES / SOURCE_VOICE / "speech" / n, 16000) for n in EVAL_FILES]
    own_ceps = [mel_cepstrum(log_mel(a, 16000)) for a in own]
    own_mels = [log_mel(a, 16000) for a in own]
    own_embeds = [speaker_embedding(a, 16000) for a in own]
    table = []
    for row in rows(args):
        refine = None
        if row.sampler != "off":
            refine = RefineParams(
                sampler=row.sampler, steps=row.steps, start=row.start, strength=row.strength
            )
        recon_l1, recon_mcd, par_mcd, par_sim, seconds = [], [], [], [], []
        for i in range(len(EVAL_FILES)):
            params = ConvertParams(
                f0_method="pm", index_rate=0.0, rms_mix_rate=1.0, protect=0.5, seed=100 + i
            )
            params = replace(params, refine=refine)
            started = time.perf_counter()
            result = convert(own[i], voices[row.family], params, resources=resources)
            seconds.append(time.perf_counter() - started)
            out = resample(result.audio, result.sample_rate, 16000)
            mel = log_mel(out, 16000)
            recon_l1.append(log_mel_l1(mel, own_mels[i]))
            recon_mcd.append(mcd(mel_cepstrum(mel), own_ceps[i]))
            result = convert(other[i], voices[row.family], params, resources=resources)
            out = resample(result.audio, result.sample_rate, 16000)
            par_mcd.append(dtw_mcd(mel_cepstrum(log_mel(out, 16000)), own_ceps[i])[0])
            try:
                par_sim.append(float(np.dot(speaker_embedding(out, 16000), own_embeds[i])))
            except ValueError:  # resemblyzer found no speech in the output
                par_sim.append(float("nan"))
        evals = 0 if refine is None else network_evaluations(refine)
        table.append(
            {
                "label": row.label,
                "evals": evals,
                "seconds": median(seconds),
                "recon_l1": float(np.mean(recon_l1)),
                "recon_mcd": float(np.mean(recon_mcd)),
                "par_mcd": float(np.mean(par_mcd)),
                "par_sim": float(np.nanmean(par_sim)) if np.isfinite(par_sim).any() else float("nan"),
            }
        )
        log.info("%s", table[-1])
    return table


def verdicts(table: list[dict[str, float | str | int]]) -> list[str]:
    by = {str(r["label"]): r for r in table}
    lines = []

    def better(a: str, b: str, key: str = "recon_mcd") -> str:
        ok = float(by[a][key]) < float(by[b][key])
        values = f"{float(by[a][key]):.2f} vs {float(by[b][key]):.2f}"
        return f"{a} {'<' if ok else '>='} {b} on {key} ({values}): {'met' if ok else 'FAILED'}"

    lines.append(better("ACDD-1 s=0.45", "off"))
    lines.append(better("ACDD-1 s=0.45", "LCM-4"))
    lines.append(better("CM-1", "LCM-1"))
    teachers = [
        r
        for r in table
        if str(r["label"]).startswith(("DDPM", "DDIM-50", "EDM-Heun")) and " s=" not in str(r["label"])
    ]
    best = min(teachers, key=lambda r: float(r["recon_mcd"]))
    for label in ("LCM-1", "CM-1", "ACDD-1 s=0.45"):
        gap = float(by[label]["recon_mcd"]) / float(best["recon_mcd"]) - 1.0
        lines.append(
            f"{label} is {100 * gap:+.1f}% from the best multi-step teacher {best['label']} on recon MCD: "
            f"{'met' if gap <= 0.10 else 'FAILED'} (goal: within 10%)"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voice", default="us1")
    parser.add_argument("--vits-steps", type=int, default=1000)
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--student-steps", type=int, default=400)
    parser.add_argument("--acdd-steps", type=int, default=200)
    parser.add_argument("--ddpm-steps", type=int, default=100)
    parser.add_argument("--heun-steps", type=int, default=8)
    parser.add_argument("--strengths", type=float, nargs="*", default=[0.3, 0.6])
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    folders = train(args)
    trained = time.perf_counter()
    table = evaluate(folders, args)
    print(
        f"\nCPU: {_cpu_name()}; 1 torch thread; training {trained - started:.0f} s, evaluation "
        f"{time.perf_counter() - trained:.0f} s"
    )
    print(
        f"budget: VITS {args.vits_steps} steps, teachers {args.teacher_steps}, LCM/CM {args.student_steps}, "
        f"ACDD {args.acdd_steps}\n"
    )
    print(
        "| sampler | net evals | s / clip | recon log-mel L1 | recon MCD (dB) | parallel DTW-MCD (dB) "
        "| parallel spk sim |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['label']} | {r['evals']} | {float(r['seconds']):.2f} | {float(r['recon_l1']):.3f} | "
            f"{float(r['recon_mcd']):.2f} | {float(r['par_mcd']):.2f} | {float(r['par_sim']):.3f} |"
        )
    print("\n" + "\n".join(verdicts(table)))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
