"""Command line: ``python -m infer convert|separate|cover|stream|live|assets ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infer.options import (
    CONVERT_ENGINES,
    CONVERT_PRECISIONS,
    DEVICES,
    ENGINES,
    F0_METHODS,
    LIVE_ENGINES,
    OUTPUT_FORMATS,
    REFINE_STARTS,
    SAMPLER_OFF,
    SAMPLERS,
    SEPARATORS,
    help_text,
    names,
)

if TYPE_CHECKING:
    from infer.assets import Registry

log = logging.getLogger("infer")

# CLI flag -> flat conversion form name (infer.params.convert_params_from_form).
_CONVERT_FLAGS = {
    "pitch_shift": "pitch_shift_semitones",
    "f0_method": "f0_method",
    "index_rate": "index_rate",
    "filter_radius": "filter_radius",
    "rms_mix_rate": "rms_mix_rate",
    "protect": "protect",
    "output_sample_rate": "output_sample_rate",
    "speaker_id": "speaker_id",
    "seed": "seed",
    "sampler": "sampler",
    "steps": "steps",
    "guidance": "guidance_weight",
    "refine_start": "refine_start",
    "refine_strength": "refine_strength",
}


def add_convert_options(
    p: argparse.ArgumentParser, *, is_model_required: bool = True, has_engine: bool = True
) -> None:
    """The conversion knobs and resources, shared by every command that converts.

    ``has_engine=False`` leaves ``--engine`` to the caller (stream and live offer :data:`LIVE_ENGINES`).
    """
    p.add_argument(
        "--model", "-m", required=is_model_required, type=Path, help="voice model .pth (RVC or Timbre)"
    )
    p.add_argument("--index", "-i", type=Path, default=None, help="faiss index (added_*.index)")
    p.add_argument("--pitch-shift", type=float, default=0.0, help="semitones, +12 = one octave up")
    p.add_argument("--f0-method", choices=names(F0_METHODS), default=None, help=help_text(F0_METHODS))
    p.add_argument("--index-rate", type=float, default=0.75)
    p.add_argument("--filter-radius", type=int, default=3)
    p.add_argument("--rms-mix-rate", type=float, default=0.25)
    p.add_argument("--protect", type=float, default=0.33)
    p.add_argument("--output-sample-rate", type=int, default=0, help="0 keeps the model's rate")
    p.add_argument("--speaker-id", type=int, default=0)
    p.add_argument("--seed", type=int, default=None, help="fix the synthesis noise")
    p.add_argument("--sampler", choices=names(SAMPLERS), default=SAMPLER_OFF, help=help_text(SAMPLERS))
    p.add_argument("--steps", type=int, default=4, help="diffusion steps (each sampler's limit in --sampler)")
    p.add_argument("--guidance", type=float, default=0.0, help="guidance weight w")
    p.add_argument(
        "--refine-start", choices=names(REFINE_STARTS), default="shallow", help=help_text(REFINE_STARTS)
    )
    p.add_argument("--refine-strength", type=float, default=0.5, help="noise level of the shallow start")
    p.add_argument("--content-encoder", default=None, help="name or path of the content encoder weights")
    p.add_argument("--rmvpe", type=Path, default=None, help="path of rmvpe.pt")
    p.add_argument("--pretrained-dir", type=Path, default=None, help="folder of base files")
    p.add_argument("--device", default="auto", help=f"{help_text(DEVICES)}; or cuda:N, xpu:N")
    p.add_argument("--half", action="store_true", help="fp16 weights on CUDA (RVC's is_half)")
    p.add_argument(
        "--precision", choices=names(CONVERT_PRECISIONS), default="auto", help=help_text(CONVERT_PRECISIONS)
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    if not has_engine:
        return
    p.add_argument(
        "--engine", choices=CONVERT_ENGINES, default="torch",
        help="; ".join(f"{n}: {ENGINES[n].help}" for n in CONVERT_ENGINES),
    )  # fmt: skip


def _add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert audio files into a voice model",
        description="Convert one or more audio files (or folders of them) into the voice of a model.",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="audio files or folders")
    p.add_argument("--output", "-o", required=True, type=Path, help="output file (one input) or folder")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default=None, help="output format (default: wav)")
    add_convert_options(p)


def _add_separation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", type=Path, help="songs (audio files) or folders of them")
    p.add_argument("--output", "-o", required=True, type=Path, help="output folder")
    p.add_argument("--separator", choices=names(SEPARATORS), default=None, help=help_text(SEPARATORS))
    p.add_argument(
        "--stem-cache", type=Path, default=None, help="stem cache folder (default: ~/.cache/timbre)"
    )


def _add_separate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "separate",
        help="split songs into vocals and instrumental",
        description="Write OUTPUT/<song>.vocals.flac and OUTPUT/<song>.instrumental.flac for each song.",
    )
    _add_separation_options(p)
    p.add_argument("--device", default="auto", help=f"{help_text(DEVICES)}; or cuda:N, xpu:N")


def _add_cover_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cover",
        help="song covers: separate, convert the vocals, remix",
        description=(
            "For each song write OUTPUT/<song>.cover.flac, OUTPUT/<song>.vocals.flac (converted vocals) and "
            "OUTPUT/<song>.instrumental.flac, at the song's rate and channel layout."
        ),
    )
    _add_separation_options(p)
    p.add_argument("--vocal-gain", type=float, default=0.0, help="dB of the converted vocals in the mix")
    p.add_argument("--instrumental-gain", type=float, default=0.0, help="dB of the instrumental in the mix")
    p.add_argument(
        "--shift-instrumental", action="store_true", help="shift the instrumental by --pitch-shift too"
    )
    add_convert_options(p)


def _run_separate(args: argparse.Namespace) -> int:
    from infer.batch import collect_inputs
    from infer.devices import resolve_device
    from infer.separation import default_separator, get_separator, separate_file

    files = collect_inputs(args.inputs)
    engine = get_separator(args.separator or default_separator(), device=resolve_device(args.device))
    for song in files:
        bar, progress = tqdm_progress(song.name)
        with bar:
            written = separate_file(song, args.output, engine, cache_dir=args.stem_cache, progress=progress)
        origin = "from the cache" if written.is_cached else engine.name
        log.info("%s -> %s, %s (%s)", song, written.vocals, written.instrumental, origin)
    return 0


def _run_cover(args: argparse.Namespace) -> int:
    from infer.batch import collect_inputs
    from infer.cover import CoverParams, make_cover

    cover = CoverParams(
        separator=args.separator,
        vocal_gain_db=args.vocal_gain,
        instrumental_gain_db=args.instrumental_gain,
        shift_instrumental=args.shift_instrumental,
    )
    params = params_from_args(args)
    files = collect_inputs(args.inputs)
    converter = converter_from_args(args)
    for song in files:
        bar, progress = tqdm_progress(song.name)
        with bar:
            result = make_cover(
                converter, song, args.output, params, cover, cache_dir=args.stem_cache, progress=progress
            )
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings_s.items())
        log.info(
            "%s -> %s (%s%s)",
            song,
            result.cover,
            timings,
            "; stems from the cache" if result.is_cached else "",
        )
        for warning in result.warnings:
            log.warning("%s: %s", song.name, warning)
    return 0


def _add_stream_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=LIVE_ENGINES,
        default="torch",
        help="; ".join(f"{n}: {ENGINES[n].help}" for n in LIVE_ENGINES),
    )
    p.add_argument(
        "--block",
        type=float,
        default=None,
        help="seconds converted per step (torch: 0.02-1.5, default 0.25; student: default 0.016)",
    )
    p.add_argument("--context", type=float, default=1.0, help="seconds of past audio the encoders see")
    p.add_argument("--crossfade", type=float, default=0.05, help="SOLA crossfade in seconds")
    p.add_argument("--search", type=float, default=0.01, help="SOLA search window in seconds")
    p.add_argument("--silence-gate", type=float, default=-60.0, help="dBFS under which a block is silence")


def _add_stream_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stream",
        help="convert a file through the live engine, block by block",
        description="Feed a file through the streaming engine in block-sized pieces and write the result.",
    )
    p.add_argument("input", type=Path, help="audio file")
    p.add_argument("--output", "-o", required=True, type=Path, help="output audio file")
    _add_stream_options(p)
    add_convert_options(p, has_engine=False)


def _add_live_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "live",
        help="convert the microphone live (local audio devices)",
        description="Convert a local input device into the voice and play it on an output device.",
    )
    p.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    p.add_argument("--input-device", type=int, default=None, help="input device index (default: system's)")
    p.add_argument("--output-device", type=int, default=None, help="output device index")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    _add_stream_options(p)
    add_convert_options(p, is_model_required=False, has_engine=False)


def stream_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~infer.stream.StreamConfig` the streaming flags ask for."""
    from infer.stream import StreamConfig

    return StreamConfig(
        block_s=0.25 if args.block is None else args.block,
        context_s=args.context,
        crossfade_s=args.crossfade,
        search_s=args.search,
        silence_gate_db=args.silence_gate,
    )


def _student_engine(args: argparse.Namespace) -> Any:
    """The voice's live student on one CPU thread (``--threads`` overrides)."""
    import torch

    from infer.student import engine_for_model

    torch.set_num_threads(args.threads or 1)
    return engine_for_model(args.model, args.block)


def _run_student_stream(args: argparse.Namespace) -> int:
    from infer.audio import load_audio, save_audio
    from infer.student import stream_student_array

    engine = _student_engine(args)
    audio = load_audio(args.input, 16000)
    bar, progress = tqdm_progress(args.input.name)
    with bar:
        out = stream_student_array(engine, audio, progress=progress)
    save_audio(args.output, out, engine.sample_rate)
    stats, config = engine.stats, engine.config
    log.info(
        "%s -> %s (live student): %d blocks of %.0f ms, compute p50 %.2f ms / p95 %.2f ms; "
        "algorithmic latency %.0f ms",
        args.input, args.output, stats.blocks, config.block_s * 1000, stats.percentile_ms(50),
        stats.percentile_ms(95), config.algorithmic_latency_s * 1000,
    )  # fmt: skip
    return 0


def _run_stream(args: argparse.Namespace) -> int:
    from infer.audio import load_audio, save_audio
    from infer.stream import StreamEngine, stream_array

    if args.engine == "student":
        return _run_student_stream(args)

    config = stream_config_from_args(args)
    params = params_from_args(args)
    audio = load_audio(args.input, 16000)
    engine = StreamEngine(converter_from_args(args), params, config)
    bar, progress = tqdm_progress(args.input.name)
    with bar:
        out = stream_array(engine, audio, progress=progress)
    save_audio(args.output, out, engine.sample_rate)
    stats = engine.stats
    log.info(
        "%s -> %s: %d blocks of %.0f ms, compute p50 %.1f ms / p95 %.1f ms / p99 %.1f ms; "
        "algorithmic latency %.0f ms",
        args.input, args.output, stats.blocks, config.block_s * 1000, stats.percentile_ms(50),
        stats.percentile_ms(95), stats.percentile_ms(99), config.algorithmic_latency_s * 1000,
    )  # fmt: skip
    from infer.stream import suggest_block_s

    suggestion = suggest_block_s(stats, config)
    if suggestion is not None:
        log.warning(
            "this machine needs %.0f ms (p95) per %.0f ms block, too slow for live use; try --block %.2f",
            stats.percentile_ms(95), config.block_s * 1000, suggestion,
        )  # fmt: skip
    return 0


def _run_live(args: argparse.Namespace) -> int:
    from infer.live_devices import list_devices, probe_devices, run_live

    if args.list_devices:
        print(list_devices())
        return 0
    if args.model is None:
        raise ValueError("name the voice model with --model (or list the devices with --list-devices)")
    probe_devices((args.input_device, args.output_device))
    if args.engine == "student":
        engine = _student_engine(args)
        return run_live(
            None,
            None,
            engine.config,
            devices=(args.input_device, args.output_device),
            seconds=args.seconds,
            engine=engine,
        )
    config = stream_config_from_args(args)
    params = params_from_args(args)
    engine_converter = converter_from_args(args)
    return run_live(
        engine_converter,
        params,
        config,
        devices=(args.input_device, args.output_device),
        seconds=args.seconds,
    )


def _output_paths(files: list[Path], output: Path, fmt: str | None) -> list[Path]:
    if len(files) == 1 and output.suffix.lower().lstrip(".") in OUTPUT_FORMATS:
        return [output]
    suffix = "." + (fmt or "wav")
    return [output / (f.stem + suffix) for f in files]


def converter_from_args(args: argparse.Namespace) -> Any:
    """The prepared :class:`~infer.pipeline.Converter` the conversion flags ask for."""
    import dataclasses

    import torch

    from infer.assets import default_pretrained_dir
    from infer.devices import resolve_device
    from infer.pipeline import Converter, Resources, load_voice

    if args.threads:
        torch.set_num_threads(args.threads)
    resources = Resources(  # checks the settings before a device is looked for
        pretrained_dir=args.pretrained_dir or default_pretrained_dir(),
        content_encoder=args.content_encoder,
        rmvpe_path=args.rmvpe,
        device=args.device,
        use_half=args.half,
        precision=args.precision,
        engine=getattr(args, "engine", "torch"),
    )
    device = str(resolve_device(args.device))
    resources = dataclasses.replace(resources, device=device)
    voice = load_voice(args.model, args.index, device=device, use_half=args.half)
    return Converter(voice, resources)


def params_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~infer.params.ConvertParams` the conversion flags ask for."""
    from infer.params import convert_params_from_form

    return convert_params_from_form({form: getattr(args, flag) for flag, form in _CONVERT_FLAGS.items()})


def tqdm_progress(name: str) -> tuple[Any, Any]:
    """A tqdm bar on stderr and a ``progress(fraction, stage)`` callback driving it."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=name, unit="%", leave=True, file=sys.stderr)

    def progress(fraction: float, stage: str) -> None:
        bar.n = round(fraction * 100)
        bar.set_postfix_str(stage, refresh=True)

    return bar, progress


def _run_convert(args: argparse.Namespace) -> int:
    from infer.batch import collect_inputs, convert_files

    params = params_from_args(args)
    files = collect_inputs(args.inputs)
    jobs = list(zip(files, _output_paths(files, args.output, args.format), strict=True))
    converter = converter_from_args(args)
    bar, progress = tqdm_progress(files[0].name if len(files) == 1 else f"{len(files)} files")
    with bar:
        outcome = convert_files(converter, jobs, params, progress=progress)
    for item in outcome.files:
        if item.error is not None:
            log.error("%s: %s", item.source, item.error)
            continue
        assert item.result is not None
        timings = ", ".join(f"{k} {v:.2f}s" for k, v in item.result.timings_s.items())
        log.info("%s -> %s (%s arithmetic; %s)", item.source, item.output, item.result.precision, timings)
        for warning in item.warnings:
            log.warning("%s: %s", item.source.name, warning)
    return 1 if outcome.failed else 0


def _add_export_onnx_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export a voice's synthesizer to ONNX (RVC's input/output names)",
        description="Write the voice model's synthesizer as an ONNX graph with RVC's signature "
        "(phone, phone_lengths, pitch, pitchf, ds, rnd -> audio); see infer/onnx_synth.py.",
    )
    p.add_argument("model", type=Path, help="the voice model (.pth)")
    p.add_argument(
        "--output", "-o", type=Path, default=None, help="the .onnx file (default: beside the model)"
    )


def _run_export_onnx(args: argparse.Namespace) -> int:
    from infer.models import build_synthesizer, load_voice_model
    from infer.onnx_synth import export_onnx

    output = export_onnx(
        build_synthesizer(load_voice_model(args.model)), args.output or args.model.with_suffix(".onnx")
    )
    print(output)
    return 0


def _add_import_parser(subparsers: argparse._SubParsersAction) -> None:
    from infer.library import ImportLimits

    p = subparsers.add_parser(
        "import",
        help="import a model zip (or a .pth and its .index) from a file or an http(s) URL",
        description="Fetch (resumable, size-limited) and check a shared model, then install it into the "
        "models folder. A URL may name a zip or a .pth; --index adds the .pth's index (a file or a URL).",
    )
    p.add_argument("source", help="a model zip or .pth: a path or an http(s):// URL")
    p.add_argument("--index", default=None, help="with a .pth: its .index file (path or URL)")
    p.add_argument("--name", default=None, help="model name (default: from the zip or the file name)")
    p.add_argument("--models-dir", type=Path, default=None, help="default: $TIMBRE_MODELS_DIR or ./models")
    p.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    p.add_argument(
        "--max-size", type=int, default=ImportLimits().max_total_bytes // 2**20,
        help="refuse downloads larger than this many MiB",
    )  # fmt: skip
    p.add_argument(
        "--download-dir", type=Path, default=None, help="where downloads resume from (default: cache)"
    )


def _run_import(args: argparse.Namespace) -> int:
    from infer.catalog import resolve_models_dir
    from infer.remote import import_model_source

    bar, progress = tqdm_progress("import")
    with bar:
        name = import_model_source(
            args.source,
            resolve_models_dir(args.models_dir),
            index=args.index,
            name=args.name,
            overwrite=args.overwrite,
            max_bytes=args.max_size * 2**20,
            download_dir=args.download_dir,
            progress=progress,
        )
    print(name)
    return 0


def add_assets_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``assets`` command (``status`` and ``download``) to a CLI's subparsers."""
    from infer.assets import DEFAULT_BASE_URL, MIRROR_ENV_VAR, PRETRAINED_DIR_ENV_VAR

    parser = subparsers.add_parser(
        "assets",
        help="list and download pretrained files",
        description=(
            f"Pretrained files live in ${PRETRAINED_DIR_ENV_VAR} or ./pretrained. Downloads come from "
            f"{DEFAULT_BASE_URL} unless {MIRROR_ENV_VAR} or --mirror names another base URL."
        ),
    )
    actions = parser.add_subparsers(dest="assets_action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="show which pretrained files are present")
    status.add_argument(
        "--dir", dest="pretrained_dir", metavar="PATH", type=Path, default=None, help="pretrained folder"
    )
    status.add_argument("--verify", action="store_true", help="re-hash present files (slow)")
    download = actions.add_parser("download", help="download pretrained files (resumable, checksummed)")
    download.add_argument("names", nargs="*", metavar="NAME", help="asset names, e.g. hubert_base.pt")
    download.add_argument("--all", dest="all_assets", action="store_true", help="download every asset")
    download.add_argument(
        "--mirror", metavar="URL", default=None, help=f"base URL (overrides {MIRROR_ENV_VAR})"
    )
    download.add_argument(
        "--dir", dest="pretrained_dir", metavar="PATH", type=Path, default=None, help="pretrained folder"
    )


def run_assets_command(args: argparse.Namespace, *, registry: Registry | None = None) -> int:
    """Run ``assets status`` or ``assets download``; returns the process exit code."""
    from infer.assets import DEFAULT_REGISTRY
    from infer.errors import TimbreError

    registry = DEFAULT_REGISTRY if registry is None else registry
    action = getattr(args, "assets_action", None)
    try:
        if action == "status":
            return _cli_status(args, registry)
        if action == "download":
            return _cli_download(args, registry)
    except TimbreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"error: unknown assets action {action!r}; use `status` or `download`", file=sys.stderr)
    return 1


def _size_cell(n_bytes: int | None) -> str:
    from infer.assets.registry import format_megabytes

    return "-" if n_bytes is None else format_megabytes(n_bytes)


def _cli_status(args: argparse.Namespace, registry: Registry) -> int:
    from infer.assets import asset_status, download_command
    from infer.assets.registry import pretrained_root

    root = pretrained_root(getattr(args, "pretrained_dir", None))
    statuses = asset_status(root, registry, verify_checksum=bool(getattr(args, "verify", False)))
    name_width = max([len("NAME"), *(len(s.name) for s in statuses)])
    print(f"pretrained folder: {root}")
    print(f"{'NAME':<{name_width}}  {'STATE':<12}  {'ON DISK':>10}  {'EXPECTED':>10}  DESCRIPTION")
    for status in statuses:
        description = registry[status.name].description
        print(
            f"{status.name:<{name_width}}  {status.state:<12}  {_size_cell(status.size_bytes):>10}  "
            f"{_size_cell(status.expected_size_bytes):>10}  {description}"
        )
    usable = sum(status.is_usable for status in statuses)
    print(f"{usable} of {len(statuses)} present; get the rest with `{download_command('NAME')}` or --all")
    return 0


def _cli_download(args: argparse.Namespace, registry: Registry) -> int:
    from tqdm import tqdm

    from infer.assets import download_asset, find_asset, resolve_base_url
    from infer.assets.registry import PROGRESS_BAR_STEPS, pretrained_root

    root = pretrained_root(getattr(args, "pretrained_dir", None))
    if getattr(args, "all_assets", False):
        names = list(registry)
    else:
        names = []
        for query in getattr(args, "names", None) or []:
            name = find_asset(query, registry).name
            if name not in names:
                names.append(name)
    if not names:
        print(
            "error: name assets to download (see `python -m infer assets status`) or --all", file=sys.stderr
        )
        return 1
    base_url = resolve_base_url(getattr(args, "mirror", None))
    for name in names:
        with tqdm(
            total=PROGRESS_BAR_STEPS, desc=name, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}"
        ) as bar:

            def show(fraction: float, message: str, bar: Any = bar) -> None:
                bar.n = round(fraction * PROGRESS_BAR_STEPS)
                bar.set_postfix_str(message.partition(": ")[2], refresh=False)
                bar.refresh()

            try:
                path = download_asset(name, root, base_url=base_url, registry=registry, progress=show)
            except KeyboardInterrupt:
                bar.close()
                print(f"stopped; the partial {name} is kept and resumes next time", file=sys.stderr)
                return 130
        print(f"{name}: {path}")
    return 0


def _is_user_error(exc: BaseException) -> bool:
    from infer.errors import TimbreError

    return isinstance(exc, TimbreError)


def build_parser(prog: str = "python -m infer") -> argparse.ArgumentParser:
    """The ``python -m infer`` argument parser."""
    parser = argparse.ArgumentParser(prog=prog, description="Timbre voice conversion")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_convert_parser(subparsers)
    _add_separate_parser(subparsers)
    _add_cover_parser(subparsers)
    _add_stream_parser(subparsers)
    _add_live_parser(subparsers)
    add_assets_parser(subparsers)
    _add_import_parser(subparsers)
    _add_export_onnx_parser(subparsers)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m infer") -> int:
    """Entry point; returns the process exit code."""
    # PyTorch's CPU allocator backs large tensors with huge pages when this is set before the first
    # allocation; on the VMs Timbre targets this removes most page-fault time (see bench/README.md).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from infer.cli import run_command

    commands = {
        "convert": _run_convert,
        "separate": _run_separate,
        "cover": _run_cover,
        "stream": _run_stream,
        "live": _run_live,
        "import": _run_import,
        "export-onnx": _run_export_onnx,
    }

    def body() -> int:
        if args.command in commands:
            return commands[args.command](args)
        return run_assets_command(args)

    return run_command(body, debug=args.debug, folder=getattr(args, "output", None))


if __name__ == "__main__":
    sys.exit(main())
