"""The page's conversions: the studio's output names and zip around :func:`infer.batch.convert_files`.

The library converts; this module only names the outputs ``<input>_<model>.wav`` in a fresh
folder, zips several of them for one download and writes the summary the page shows. Model
code (torch, the pipeline) is imported on first use.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infer.catalog import ModelEntry
from infer.params import ConvertParams
from infer.progress import ProgressFn, StopFn, report
from ui.forms import StudioError
from ui.views import safe_stem

SAMPLE_RATE_16K = 16000
INDEX_AUTO = "(model's own index)"
INDEX_NONE = "(no index)"


@dataclass(frozen=True)
class ConvertOutcome:
    """What a batch conversion produced."""

    outputs: tuple[Path, ...]
    archive: Path | None
    f0_source_hz: np.ndarray | None
    f0_target_hz: np.ndarray | None
    failures: tuple[str, ...]
    summary: str


def resolve_index_choice(models_dir: Path, entry: ModelEntry, choice: str | None) -> Path | None:
    """The index the user picked: the model's own, none, or one under the models folder."""
    if not choice or choice == INDEX_AUTO:
        return entry.index_path
    if choice == INDEX_NONE:
        return None
    root = models_dir.resolve()
    path = (root / choice).resolve()
    if not path.is_relative_to(root) or path.suffix != ".index" or not path.is_file():
        raise StudioError(f"index {choice!r} is not an .index file in the models folder; refresh the list")
    return path


def index_choices(entries: Sequence[ModelEntry], models_dir: Path) -> list[str]:
    """The index dropdown: the model's own, none, and every index under the models folder."""
    found = []
    for e in entries:
        if e.index_path is not None:
            try:
                found.append(e.index_path.relative_to(models_dir).as_posix())
            except ValueError:
                continue
    return [INDEX_AUTO, INDEX_NONE, *sorted(set(found))]


def check_decodable(path: Path) -> None:
    """Decode ``path`` (AudioDecodeError if it cannot be): a broken upload fails before the model loads."""
    from infer.audio import decode_audio

    decode_audio(path, SAMPLE_RATE_16K)


def load_converter(
    entry: ModelEntry, index_path: Path | None, *, pretrained_dir: Path, device: str, precision: str
) -> Any:
    """A prepared :class:`infer.pipeline.Converter` for ``entry`` (``device`` may be ``auto``)."""
    from infer.devices import resolve_device
    from infer.pipeline import Converter, Resources, load_voice

    device_name = str(resolve_device(device))
    try:
        resources = Resources(pretrained_dir=pretrained_dir, device=device_name, precision=precision)
    except ValueError as exc:
        raise StudioError(f"invalid conversion settings: {exc}") from exc
    return Converter(load_voice(entry.pth_path, index_path, device=device_name), resources)


def output_paths(inputs: Sequence[Path], model_name: str, out_dir: Path) -> list[Path]:
    """``<input>_<model>.wav`` in ``out_dir`` for each input; a repeated name gets ``_<number>``."""
    taken: set[str] = set()
    paths = []
    for number, source in enumerate(inputs):
        name = f"{safe_stem(source.name)}_{safe_stem(model_name)}.wav"
        if name in taken:
            name = f"{Path(name).stem}_{number + 1}.wav"
        taken.add(name)
        paths.append(out_dir / name)
    return paths


def convert_to_folder(
    converter: Any,
    model_name: str,
    inputs: Sequence[Path],
    params: ConvertParams,
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> ConvertOutcome:
    """Convert each input with ``converter`` into ``out_dir``; several outputs are also zipped.

    With several inputs, a file the library rejects is reported and skipped; with one, its error
    is raised (see :func:`infer.batch.convert_files`).
    """
    from infer.batch import convert_files

    jobs = list(zip(inputs, output_paths(inputs, model_name, out_dir), strict=True))
    outcome = convert_files(converter, jobs, params, progress=progress, should_stop=should_stop)
    failures = tuple(f"{item.source.name}: {item.error}" for item in outcome.failed)
    converted = outcome.converted
    if not converted:
        raise StudioError("no file could be converted:\n" + "\n".join(failures))
    outputs = tuple(item.output for item in converted if item.output is not None)
    archive = None
    if len(inputs) > 1:
        archive = out_dir / f"timbre_{safe_stem(model_name)}_{len(outputs)}_files.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in outputs:
                zf.write(path, arcname=path.name)
    report(progress, 1.0, "done")
    first = converted[0]
    return ConvertOutcome(
        outputs=outputs,
        archive=archive,
        f0_source_hz=None if first.result is None else first.result.f0_source_hz,
        f0_target_hz=None if first.result is None else first.result.f0_target_hz,
        failures=failures,
        summary=_summary(model_name, len(inputs), len(outputs), first, failures),
    )


def _summary(model_name: str, count: int, done: int, first: Any, failures: Sequence[str]) -> str:
    summary = f"Converted {done} of {count} file(s) with **{model_name}**"
    result = first.result
    if result is not None:
        summary += f" ({result.precision})"
        if result.timings_s:
            summary += " · " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items())
    if first.warnings:
        summary += "\n\n" + "\n".join(f"- ⚠ {w}" for w in first.warnings)
    if failures:
        summary += "\n\n**Skipped:**\n" + "\n".join(f"- {f}" for f in failures)
    return summary
