"""Command line: ``python -m infer convert ...`` and ``python -m infer assets ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("infer")

AUDIO_SUFFIXES = frozenset(
    {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac", ".wma", ".webm", ".mp4", ".mkv", ".mov"}
)
OUTPUT_FORMATS = ("wav", "flac", "mp3", "m4a")


def _add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert audio files into a voice model",
        description="Convert one or more audio files (or folders of them) into the voice of a model.",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="audio files or folders")
    p.add_argument("--model", "-m", required=True, type=Path, help="voice model .pth (RVC or Timbre)")
    p.add_argument("--index", "-i", type=Path, default=None, help="faiss index (added_*.index)")
    p.add_argument("--output", "-o", required=True, type=Path, help="output file (one input) or folder")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default=None, help="output format (default: wav)")
    p.add_argument("--pitch-shift", type=float, default=0.0, help="semitones, +12 = one octave up")
    p.add_argument("--f0-method", default=None, help="pm, harvest, crepe, crepe-tiny, fcpe, rmvpe")
    p.add_argument("--index-rate", type=float, default=0.75)
    p.add_argument("--filter-radius", type=int, default=3)
    p.add_argument("--rms-mix-rate", type=float, default=0.25)
    p.add_argument("--protect", type=float, default=0.33)
    p.add_argument("--output-sample-rate", type=int, default=0, help="0 keeps the model's rate")
    p.add_argument("--speaker-id", type=int, default=0)
    p.add_argument("--seed", type=int, default=None, help="fix the synthesis noise")
    p.add_argument(
        "--sampler",
        choices=("off", "ddpm", "ddim", "lcm"),
        default="off",
        help="diffusion refinement of the decoder latent (off = RVC's path)",
    )
    p.add_argument("--steps", type=int, default=4, help="diffusion steps (LCM: 1-4)")
    p.add_argument("--guidance", type=float, default=0.0, help="guidance weight w")
    p.add_argument("--refine-start", choices=("shallow", "noise"), default="shallow")
    p.add_argument("--refine-strength", type=float, default=0.5, help="noise level of the shallow start")
    p.add_argument("--content-encoder", default=None, help="name or path of the HuBERT/ContentVec weights")
    p.add_argument("--rmvpe", type=Path, default=None, help="path of rmvpe.pt")
    p.add_argument("--pretrained-dir", type=Path, default=None, help="folder of base files")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--half", action="store_true", help="fp16 weights on CUDA (RVC's is_half)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 on CPUs with native bfloat16, else fp32; fp32 gives RVC's exact numbers",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def _collect_inputs(inputs: list[Path]) -> list[Path]:
    from infer.errors import AudioDecodeError

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise AudioDecodeError(f"{item}: no audio files in this folder")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise AudioDecodeError(f"{item}: no such file or folder")
    return files


def _output_paths(files: list[Path], output: Path, fmt: str | None) -> list[Path]:
    if len(files) == 1 and output.suffix.lower().lstrip(".") in OUTPUT_FORMATS:
        return [output]
    suffix = "." + (fmt or "wav")
    return [output / (f.stem + suffix) for f in files]


def _run_convert(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from infer.assets import default_pretrained_dir
    from infer.audio import load_audio, save_audio
    from infer.pipeline import ConvertParams, Resources, convert, load_voice

    if args.threads:
        torch.set_num_threads(args.threads)
    params = ConvertParams(
        pitch_shift_semitones=args.pitch_shift,
        f0_method=args.f0_method,
        index_rate=args.index_rate,
        filter_radius=args.filter_radius,
        rms_mix_rate=args.rms_mix_rate,
        protect=args.protect,
        output_sample_rate=args.output_sample_rate,
        speaker_id=args.speaker_id,
        seed=args.seed,
        sampler=args.sampler,
        diffusion_steps=args.steps,
        guidance_weight=args.guidance,
        refine_start=args.refine_start,
        refine_strength=args.refine_strength,
    )
    resources = Resources(
        pretrained_dir=args.pretrained_dir or default_pretrained_dir(),
        content_encoder=args.content_encoder,
        rmvpe_path=args.rmvpe,
        device=args.device,
        use_half=args.half,
        precision=args.precision,
    )
    files = _collect_inputs(args.inputs)
    outputs = _output_paths(files, args.output, args.format)
    voice = load_voice(args.model, args.index, device=args.device, use_half=args.half)
    failures = 0
    for src, dst in zip(files, outputs, strict=True):
        with tqdm(total=100, desc=src.name, unit="%", leave=True, file=sys.stderr) as bar:

            def progress(fraction: float, stage: str, bar: tqdm = bar) -> None:
                bar.n = round(fraction * 100)
                bar.set_postfix_str(stage, refresh=True)

            try:
                audio = load_audio(src, 16000)
                result = convert(audio, voice, params, resources=resources, progress=progress)
            except Exception as exc:
                if len(files) == 1 or not _is_user_error(exc):
                    raise
                failures += 1
                log.error("%s: %s", src, exc)
                continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        save_audio(dst, result.audio, result.sample_rate)
        timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings_s.items())
        log.info("%s -> %s (%s arithmetic; %s)", src, dst, result.precision, timings)
    return 1 if failures else 0


def _is_user_error(exc: BaseException) -> bool:
    from infer.errors import TimbreError

    return isinstance(exc, TimbreError)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m infer`` argument parser."""
    from infer.assets import add_assets_parser

    parser = argparse.ArgumentParser(prog="python -m infer", description="Timbre voice conversion")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_convert_parser(subparsers)
    add_assets_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    # PyTorch's CPU allocator backs large tensors with huge pages when this is set before the first
    # allocation; on the VMs Timbre targets this removes most page-fault time (see bench/README.md).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from infer.errors import TimbreError

    try:
        if args.command == "convert":
            return _run_convert(args)
        from infer.assets import run_assets_command

        return run_assets_command(args)
    except (TimbreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
