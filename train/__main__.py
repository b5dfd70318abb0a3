"""Command line: ``python -m train run|<stage>|report|import`` (stages: see ``STAGE_COMMANDS``).

``python -m train report NAME`` makes (or remakes) the report card of a trained experiment and
exports the model again, so the model folder and the zip carry the new ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from infer.options import (
    CONTENT_ENCODERS,
    DEVICES,
    F0_METHODS,
    MODEL_SIZES,
    MODEL_VERSIONS,
    PARAMETERISATIONS,
    SLICE_MODES,
    TRAIN_SAMPLE_RATES_HZ,
    TRAIN_STAGES,
    help_text,
    names,
)
from train.settings import TrainSettings

log = logging.getLogger("train")

REPORT_COMMAND = "report"


def _stage_commands() -> tuple[str, ...]:
    """The single-stage commands: every stage of the table but the report (its own command)."""
    return tuple(stage for stage in names(TRAIN_STAGES) if stage != REPORT_COMMAND)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="model / experiment name")
    p.add_argument("--models-dir", type=Path, default=None, help="default: $TIMBRE_MODELS_DIR or ./models")
    p.add_argument("--data-dir", type=Path, default=None, help="default: $TIMBRE_DATA_DIR or ./data")
    p.add_argument("--work-dir", type=Path, default=None, help="default: <data-dir>/experiments/<name>")
    p.add_argument("--pretrained-dir", type=Path, default=None)


def _add_settings(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Training settings (defaults from :class:`TrainSettings`); single stages default to the saved ones."""
    base = {f.name: f.default for f in fields(TrainSettings)}

    def d(key: str) -> Any:
        return base[key] if defaults else None

    p.add_argument("--dataset", nargs="+", default=None, help="audio files, folders or zips")
    p.add_argument("--sample-rate", type=int, choices=TRAIN_SAMPLE_RATES_HZ, default=d("sample_rate"))
    p.add_argument(
        "--version", choices=names(MODEL_VERSIONS), default=d("version"), help=help_text(MODEL_VERSIONS)
    )
    p.add_argument("--no-f0", dest="use_f0", action="store_false", default=None, help="train without pitch")
    p.add_argument("--f0-method", choices=names(F0_METHODS), default=None, help=help_text(F0_METHODS))
    p.add_argument(
        "--content-encoder",
        default=d("content_encoder"),
        help=f"a checkpoint path, or {help_text(CONTENT_ENCODERS)}",
    )
    p.add_argument("--slicing", choices=names(SLICE_MODES), default=None, help=help_text(SLICE_MODES))
    p.add_argument("--no-normalize", dest="use_normalization", action="store_false", default=None)
    p.add_argument("--epochs", type=int, default=d("epochs"))
    p.add_argument("--batch-size", type=int, default=d("batch_size"))
    p.add_argument("--save-every", dest="save_every_epochs", type=int, default=d("save_every_epochs"))
    p.add_argument(
        "--max-steps", type=int, default=d("max_steps"), help="stop after this many steps (0 = no limit)"
    )
    p.add_argument("--from-scratch", dest="use_pretrained", action="store_false", default=None)
    p.add_argument("--size", choices=names(MODEL_SIZES), default=d("size"), help=help_text(MODEL_SIZES))
    p.add_argument("--diffusion", dest="use_diffusion", action="store_true", default=None)
    p.add_argument("--distill", dest="use_distillation", action="store_true", default=None)
    p.add_argument("--diffusion-epochs", type=int, default=d("diffusion_epochs"))
    p.add_argument("--diffusion-max-steps", type=int, default=d("diffusion_max_steps"))
    p.add_argument("--distill-epochs", type=int, default=d("distill_epochs"))
    p.add_argument("--distill-max-steps", type=int, default=d("distill_max_steps"))
    p.add_argument(
        "--diffusion-parameterisation",
        choices=names(PARAMETERISATIONS),
        default=d("diffusion_parameterisation"),
        help=help_text(PARAMETERISATIONS),
    )
    p.add_argument("--cm", dest="use_cm", action="store_true", default=None, help="consistency student (edm)")
    p.add_argument("--acdd", dest="use_acdd", action="store_true", default=None, help="ACDD student (edm)")
    p.add_argument("--cm-epochs", type=int, default=d("cm_epochs"))
    p.add_argument("--cm-max-steps", type=int, default=d("cm_max_steps"))
    p.add_argument("--acdd-epochs", type=int, default=d("acdd_epochs"))
    p.add_argument("--acdd-max-steps", type=int, default=d("acdd_max_steps"))
    p.add_argument(
        "--live-student",
        dest="use_live_student",
        action="store_true",
        default=None,
        help="distil the causal low-latency live student (python -m infer live|stream --engine student)",
    )
    p.add_argument("--live-student-steps", type=int, default=d("live_student_steps"))
    p.add_argument(
        "--live-student-pool", default=None, help="a folder of extra source speech for the live student"
    )
    p.add_argument("--device", default=d("device"), help=f"{help_text(DEVICES)}; or cuda:N, xpu:N")
    p.add_argument("--workers", type=int, default=d("workers"))
    p.add_argument(
        "--no-report",
        dest="use_report",
        action="store_false",
        default=None,
        help="hold no clips out and skip the report card",
    )


def build_parser(prog: str = "python -m train") -> argparse.ArgumentParser:
    """The ``python -m train`` argument parser."""
    parser = argparse.ArgumentParser(prog=prog, description="Timbre: train voice models")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="the whole chain: prepare, extract, fit, index, [optional stages], export",
    )
    _add_common(run)
    _add_settings(run, defaults=True)
    for stage in _stage_commands():
        p = sub.add_parser(stage, help=f"only the {stage} stage (resumable)")
        _add_common(p)
        _add_settings(p, defaults=False)
    rep = sub.add_parser(
        REPORT_COMMAND, help="make the report card of a trained experiment, then export again"
    )
    rep.add_argument("name", help="model / experiment name")
    rep.add_argument("--models-dir", type=Path, default=None, help="default: $TIMBRE_MODELS_DIR or ./models")
    rep.add_argument("--data-dir", type=Path, default=None, help="default: $TIMBRE_DATA_DIR or ./data")
    rep.add_argument("--work-dir", type=Path, default=None, help="default: <data-dir>/experiments/<name>")
    rep.add_argument("--pretrained-dir", type=Path, default=None)
    rep.add_argument("--probe-dir", type=Path, default=None, help="corpus folder of the probe phrases")
    rep.add_argument("--max-checkpoints", type=int, default=6, help="checkpoints evaluated at most")
    rep.add_argument("--max-phrases", type=int, default=4, help="probe phrases used at most")
    rep.add_argument("--no-export", dest="use_export", action="store_false", help="only write report.json")
    imp = sub.add_parser("import", help="import a model zip (or a .pth) into the models folder")
    imp.add_argument("source", type=Path, help="a model zip or a .pth")
    imp.add_argument("--index", type=Path, default=None, help="with a .pth: its .index file")
    imp.add_argument("--name", default=None)
    imp.add_argument("--models-dir", type=Path, default=None)
    imp.add_argument("--overwrite", action="store_true")
    return parser


_SLICE_KEYS = {"slicing": "mode", "use_normalization": "use_normalization"}


def _settings(args: argparse.Namespace, *, fresh: bool) -> Any:
    from infer.catalog import resolve_data_dir, resolve_models_dir

    models_dir = resolve_models_dir(args.models_dir)
    work_dir = args.work_dir or resolve_data_dir(args.data_dir) / "experiments" / args.name
    given = {
        key: value
        for key, value in vars(args).items()
        if value is not None
        and key
        not in {"command", "verbose", "debug", "name", "models_dir", "data_dir", "work_dir", *_SLICE_KEYS}
    }
    if "dataset" in given:
        given["dataset"] = tuple(str(Path(p).resolve()) for p in given["dataset"])
    slice_overrides = {_SLICE_KEYS[k]: getattr(args, k) for k in _SLICE_KEYS if getattr(args, k) is not None}
    if fresh or not (work_dir / "settings.json").is_file():
        base: dict[str, Any] = {"name": args.name, "work_dir": work_dir, "models_dir": models_dir}
    else:
        base = TrainSettings.load(work_dir).to_dict()
        base.update({"work_dir": work_dir, "models_dir": models_dir})
    base.update(given)
    if slice_overrides:
        base["slice"] = {**dict(base.get("slice") or {}), **slice_overrides}
    return TrainSettings.from_dict(base)


def _run_import(args: argparse.Namespace) -> int:
    from infer.catalog import resolve_models_dir
    from infer.library import import_model_files, import_model_zip

    models_dir = resolve_models_dir(args.models_dir)
    if args.source.suffix.lower() == ".zip":
        name = import_model_zip(args.source, models_dir, name=args.name, overwrite=args.overwrite)
    else:
        name = import_model_files(
            args.source, args.index, models_dir, name=args.name, overwrite=args.overwrite
        )
    log.info("imported %s into %s", name, models_dir / name)
    return 0


def _progress_bar() -> Any:
    from tqdm import tqdm

    return tqdm(total=1000, unit="‰", file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}")


def _run_training(args: argparse.Namespace) -> int:
    from infer.errors import AssetError
    from train.pipeline import offline_encoder_hint, run_stages, stages_for_run

    settings = _settings(args, fresh=args.command == "run")
    stages = stages_for_run(settings) if args.command == "run" else [args.command]
    with _progress_bar() as bar:

        def progress(fraction: float, message: str) -> None:
            bar.n = round(fraction * 1000)
            bar.set_postfix_str(message[:90], refresh=True)

        def metrics(step: int, row: dict[str, float]) -> None:
            if step % 50 == 0:
                log.info("step %d: %s", step, json.dumps({k: round(v, 4) for k, v in row.items()}))

        try:
            results = run_stages(settings, stages, progress=progress, on_metrics=metrics)
        except AssetError as exc:
            hint = (
                offline_encoder_hint(settings.pretrained_dir)
                if settings.content_encoder == "hubert_base"
                else None
            )
            if hint is None:
                raise
            raise AssetError(f"{exc}\n{hint}") from exc
    for result in results:
        log.info("%s: %s", result.stage, result.summary)
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from infer.catalog import resolve_data_dir, resolve_models_dir
    from train.pipeline import run_stages, stage_report
    from train.report import ReportConfig

    work_dir = args.work_dir or resolve_data_dir(args.data_dir) / "experiments" / args.name
    base = TrainSettings.load(work_dir).to_dict()
    base.update({"work_dir": work_dir, "models_dir": resolve_models_dir(args.models_dir)})
    if args.pretrained_dir is not None:
        base["pretrained_dir"] = args.pretrained_dir
    settings = TrainSettings.from_dict(base)
    config = ReportConfig(
        max_checkpoints=args.max_checkpoints,
        max_phrases=args.max_phrases,
        probe_audio_dir=args.probe_dir,
    )
    with _progress_bar() as bar:

        def progress(fraction: float, message: str) -> None:
            bar.n = round(fraction * 1000)
            bar.set_postfix_str(message[:90], refresh=True)

        result = stage_report(settings, progress=progress, should_stop=None, config=config)
        log.info("report: %s", result.summary)
        if args.use_export:
            for exported in run_stages(settings, ["export"]):
                log.info("%s: %s", exported.stage, exported.summary)
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m train") -> int:
    """Entry point; returns the exit code."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from infer.cli import run_command

    def body() -> int:
        if args.command == "import":
            return _run_import(args)
        if args.command == REPORT_COMMAND:
            return _run_report(args)
        return _run_training(args)

    return run_command(
        body,
        debug=args.debug,
        folder=getattr(args, "work_dir", None) or getattr(args, "data_dir", None),
        interrupted="interrupted; run the same command again to resume",
    )


if __name__ == "__main__":
    sys.exit(main())
