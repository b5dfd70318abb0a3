"""Batch conversion: many files through one prepared :class:`~infer.pipeline.Converter`.

The CLI and the studio both call :func:`convert_files`; they differ only in how they name the
outputs and report progress.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infer.audio import decode_audio, save_audio
from infer.errors import AudioDecodeError, Cancelled, TimbreError
from infer.options import AUDIO_SUFFIXES
from infer.params import ConversionResult, ConvertParams
from infer.pipeline import SAMPLE_RATE_16K, Converter
from infer.progress import ProgressFn, StopFn, check_stop, report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileOutcome:
    """One input's fate: the written file and its result, or the error that skipped it."""

    source: Path
    output: Path | None
    result: ConversionResult | None
    error: str | None
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class BatchOutcome:
    """Every input's outcome, in input order."""

    files: tuple[FileOutcome, ...]

    @property
    def converted(self) -> tuple[FileOutcome, ...]:
        """The inputs that were converted and written."""
        return tuple(f for f in self.files if f.output is not None)

    @property
    def failed(self) -> tuple[FileOutcome, ...]:
        """The inputs that were skipped, each with its error."""
        return tuple(f for f in self.files if f.error is not None)


def collect_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Files named directly, plus the audio files (by suffix) found under named folders, sorted."""
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


def convert_files(
    converter: Converter,
    jobs: Sequence[tuple[Path, Path]],
    params: ConvertParams,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> BatchOutcome:
    """Convert each ``(source, output)`` pair; outputs are written atomically as they finish.

    With one job its error is raised; with several, a file the library rejects (a
    :class:`TimbreError`) is recorded and skipped, and the rest go on. Cancelling raises
    :class:`Cancelled` whatever the count.
    """
    count = len(jobs)
    outcomes: list[FileOutcome] = []
    for number, (source, output) in enumerate(jobs):
        check_stop(should_stop)

        def file_progress(fraction: float, stage: str, number: int = number, name: str = source.name) -> None:
            label = f"{name} ({number + 1}/{count}): {stage}" if count > 1 else stage
            report(progress, (number + fraction) / count, label)

        try:
            decoded = decode_audio(source, SAMPLE_RATE_16K)
            result = converter.convert(decoded.audio, params, progress=file_progress, should_stop=should_stop)
        except TimbreError as exc:
            if count == 1 or isinstance(exc, Cancelled):
                raise
            log.warning("conversion of %s failed: %s", source, exc)
            outcomes.append(FileOutcome(source, None, None, str(exc), ()))
            continue
        result.warnings[:0] = decoded.warnings
        written = save_audio(output, result.audio, result.sample_rate)
        outcomes.append(FileOutcome(source, written, result, None, tuple(result.warnings)))
    report(progress, 1.0, "done")
    return BatchOutcome(tuple(outcomes))
