"""Diffusion refinement quality and cost: VITS prior vs DDPM / DDIM / LCM on held-out clips.

Trains a small voice model on one voice of the corpus (CPU, minutes), then a teacher latent
diffusion head and its LCM distillation, and resynthesises held-out clips of the same voice
through every sampler with the same conditions and seeds. Prints mel-spectrogram L1 and log-F0
RMSE against the original clips, and wall time per sampler. A second table times LCM-4 on top
of a real-size v2 40k conversion (random weights) to measure its share of the whole.

    python bench/diffusion_quality.py                  # train (cached in bench/out) and evaluate
    python bench/diffusion_quality.py --skip-realsize  # only the quality table
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parents[1]
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from bench._common import OUT_DIR, SHARED_DIR, ensure_kit, load_average, median  # noqa: E402

VOICES = SHARED_DIR / "data" / "voices"
TRAIN_FILES = [f"{i:03d}.flac" for i in range(21, 61)]
HELDOUT_FILES = [f"{i:03d}.flac" for i in range(1, 5)]
N_MELS = 80

log = logging.getLogger("bench.diffusion_quality")


def train_model(args: argparse.Namespace) -> Path:
    """Train (or reuse) the small model with its teacher and LCM heads; returns the model folder."""
    from tests.fakes import hubert_config, write_hubert_checkpoint
    from train.pipeline import TrainSettings, run_stages

    root = OUT_DIR / "diffusion_quality"
    pretrained = root / "pretrained"
    if not (pretrained / "hubert_base.pt").is_file():
        write_hubert_checkpoint(pretrained / "hubert_base.pt", hubert_config("v2"))
    dataset = root / "dataset"
    dataset.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_FILES:
        link = dataset / name
        if not link.exists():
            link.symlink_to(VOICES / args.voice / "speech" / name)
    settings = TrainSettings(
        name="dq",
        work_dir=root / "work",
        models_dir=root / "models",
        pretrained_dir=pretrained,
        dataset=(str(dataset),),
        sample_rate=40000,
        version="v2",
        use_f0=True,
        f0_method="pm",
        size="tiny",
        epochs=10_000,
        batch_size=4,
        save_every_epochs=50,
        max_steps=args.vits_steps,
        use_pretrained=False,
        use_diffusion=True,
        use_distillation=True,
        diffusion_epochs=10_000,
        diffusion_max_steps=args.teacher_steps,
        distill_epochs=10_000,
        distill_max_steps=args.distill_steps,
        device="cpu",
        workers=1,
    )
    started = time.perf_counter()

    def progress(fraction: float, message: str) -> None:
        log.debug("%5.1f%% %s", 100 * fraction, message)

    run_stages(
        settings, ["prepare", "extract", "fit", "index", "diffusion", "distill", "export"], progress=progress
    )
    log.info("training chain took %.0f s", time.perf_counter() - started)
    return settings.models_dir / "dq"


def log_mel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(
        y=audio.astype(np.float32), sr=sample_rate, n_fft=2048, hop_length=400, n_mels=N_MELS, fmin=0.0
    )
    return np.log(np.maximum(mel, 1e-5))


def f0_cents_rmse(audio_16k: np.ndarray, reference_16k: np.ndarray) -> float:
    from infer.metrics import f0_rmse_cents
    from infer.pitch import get_pitch_extractor

    pm = get_pitch_extractor("pm")
    n = min(len(audio_16k), len(reference_16k))
    return float(f0_rmse_cents(pm.extract(audio_16k[:n]), pm.extract(reference_16k[:n])))


def evaluate(model_dir: Path, args: argparse.Namespace) -> None:
    import torch

    from infer.audio import load_audio, resample
    from infer.pipeline import ConvertParams, Resources, convert, load_voice

    torch.set_num_threads(args.threads)
    voice = load_voice(model_dir / "dq.pth")
    resources = Resources(pretrained_dir=OUT_DIR / "diffusion_quality" / "pretrained")
    settings: list[tuple[str, str, int]] = [("off (VITS prior)", "off", 1), ("DDPM", "ddpm", args.ddpm_steps)]
    settings += [(f"DDIM-{k}", "ddim", k) for k in (1, 2, 4, 8, 50)]
    settings += [(f"LCM-{k}", "lcm", k) for k in (1, 2, 4)]
    rows = []
    for label, sampler, steps in settings:
        mel_l1, f0_rmse, times = [], [], []
        for i, name in enumerate(HELDOUT_FILES):
            path = VOICES / args.voice / "speech" / name
            source = load_audio(path, 16000)
            reference = load_audio(path, voice.sample_rate)
            params = ConvertParams(
                f0_method="pm",
                index_rate=0.0,
                rms_mix_rate=1.0,
                protect=0.5,
                seed=100 + i,
                sampler=sampler,
                diffusion_steps=steps,
                guidance_weight=args.guidance,
                refine_start=args.start,
            )
            started = time.perf_counter()
            result = convert(source, voice, params, resources=resources)
            times.append(time.perf_counter() - started)
            a, b = log_mel(result.audio, result.sample_rate), log_mel(reference, voice.sample_rate)
            frames = min(a.shape[1], b.shape[1])
            mel_l1.append(float(np.mean(np.abs(a[:, :frames] - b[:, :frames]))))
            f0_rmse.append(f0_cents_rmse(resample(result.audio, result.sample_rate, 16000), source))
        rows.append((label, float(np.mean(mel_l1)), float(np.nanmean(f0_rmse)), median(times)))
    off_time = rows[0][3]
    print(
        f"\nHeld-out resynthesis of {len(HELDOUT_FILES)} {args.voice} clips; "
        f"start={args.start}, w={args.guidance}"
    )
    print(f"load average: {load_average()}; torch threads {args.threads}\n")
    print("| sampler | mel L1 (log) | log-F0 RMSE (cents) | time per clip (s) | vs off |")
    print("|---|---|---|---|---|")
    for label, mel, f0, seconds in rows:
        print(f"| {label} | {mel:.3f} | {f0:.1f} | {seconds:.2f} | {seconds / off_time:.2f}x |")
    by = {label: (mel, f0) for label, mel, f0, _ in rows}
    verdicts = [
        f"LCM-{k} {'beats' if by[f'LCM-{k}'][0] < by[f'DDIM-{k}'][0] else 'does not beat'} DDIM-{k}"
        for k in (1, 2, 4)
    ]
    teacher_best = min(mel for label, mel, _, _ in rows if label.startswith(("DDPM", "DDIM")))
    gap = by["LCM-4"][0] / teacher_best - 1
    print(
        "\n" + "; ".join(verdicts) + f"; LCM-4 is {100 * gap:+.1f}% from the best teacher setting (mel L1)."
    )


def realsize_overhead(args: argparse.Namespace) -> None:
    """LCM-4 on top of a real-size v2 40k conversion, random weights, real-size denoiser."""
    import torch

    from infer.audio import load_audio
    from infer.pipeline import ConvertParams, Resources, convert, load_voice
    from infer.synthesizer import SynthConfig
    from tests.fakes import write_diffusion_heads_sized
    from train.pipeline import FULL_DENOISER_CHANNELS, FULL_DENOISER_LAYERS

    torch.set_num_threads(args.threads)
    kit = ensure_kit()
    model_dir = OUT_DIR / "diffusion_quality" / f"realsize_{FULL_DENOISER_CHANNELS}x{FULL_DENOISER_LAYERS}"
    model_dir.mkdir(parents=True, exist_ok=True)
    pth = model_dir / "real.pth"
    if not pth.exists():
        pth.symlink_to(kit.model_path)
    config = SynthConfig.preset("v2", 40000, True)
    if not (model_dir / "diffusion_lcm.pt").is_file():
        write_diffusion_heads_sized(
            model_dir, config, residual_channels=FULL_DENOISER_CHANNELS, n_layers=FULL_DENOISER_LAYERS
        )
    voice = load_voice(pth)
    source = load_audio(VOICES / "mixtures" / "long_us2_speech_180s.flac", 16000)[: 16000 * args.realsize_s]
    resources = Resources(pretrained_dir=kit.pretrained_dir)
    timings: dict[str, list[float]] = {"off": [], "lcm": []}
    for _ in range(args.repeats):
        for sampler in ("off", "lcm"):
            params = ConvertParams(f0_method="fcpe", seed=0, sampler=sampler, diffusion_steps=4)
            started = time.perf_counter()
            result = convert(source, voice, params, resources=resources)
            timings[sampler].append(time.perf_counter() - started)
            if sampler == "lcm":
                diffusion_s = result.timings_s.get("diffusion", 0.0)
    off, lcm = median(timings["off"]), median(timings["lcm"])
    print(
        f"\nReal-size v2 40k conversion of {args.realsize_s} s (random weights, fcpe), "
        f"median of {args.repeats}:"
    )
    print("| path | total (s) | RTF | added |")
    print("|---|---|---|---|")
    print(f"| off | {off:.1f} | {off / args.realsize_s:.3f} | - |")
    print(
        f"| LCM-4 (denoiser {FULL_DENOISER_CHANNELS} ch x {FULL_DENOISER_LAYERS} layers) "
        f"| {lcm:.1f} | {lcm / args.realsize_s:.3f} "
        f"| {100 * (lcm / off - 1):+.1f}% |"
    )
    print(f"diffusion stage alone in the last LCM run: {diffusion_s:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--voice", default="us1")
    parser.add_argument("--vits-steps", type=int, default=1500)
    parser.add_argument("--teacher-steps", type=int, default=3000)
    parser.add_argument("--distill-steps", type=int, default=1500)
    parser.add_argument("--ddpm-steps", type=int, default=200)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--start", choices=("noise", "shallow"), default="noise")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--realsize-s", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-realsize", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.skip_quality:
        model_dir = train_model(args)
        evaluate(model_dir, args)
    if not args.skip_realsize:
        realsize_overhead(args)


if __name__ == "__main__":
    main()
