"""Server folders the Train tab may read: only under the dataset roots, checked after links.

The roots are the data folder's ``datasets`` area plus the folders the operator names with
``--dataset-root`` (repeatable) or ``$TIMBRE_DATASET_ROOTS`` (``os.pathsep``-separated). A
folder typed in the page is resolved (symbolic links followed) and must lie inside a root;
otherwise the one-line refusal names the roots and says nothing about the path itself. An
accepted folder is listed here, audio files only: a file whose link leads outside the folder's
root is left out, other names are counted, never shown.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from infer.options import AUDIO_SUFFIXES
from ui.forms import DATASET_LIMITS, StudioError

DATASETS_DIRNAME = "datasets"
ROOTS_ENV = "TIMBRE_DATASET_ROOTS"
DATA_ROOT_LABEL = "datasets/ (in the studio's data folder)"


@dataclass(frozen=True)
class DatasetRoot:
    """One folder the page may read datasets from, and how the page names it."""

    path: Path
    label: str


def dataset_roots(
    data_dir: Path, extra: Iterable[str | Path] = (), environ: dict[str, str] | None = None
) -> tuple[DatasetRoot, ...]:
    """The data folder's datasets area, then ``extra``, then ``$TIMBRE_DATASET_ROOTS``' folders."""
    env = os.environ if environ is None else environ
    named = [*extra, *(p for p in env.get(ROOTS_ENV, "").split(os.pathsep) if p.strip())]
    roots = [DatasetRoot(Path(data_dir) / DATASETS_DIRNAME, DATA_ROOT_LABEL)]
    roots += [DatasetRoot(Path(p).expanduser().absolute(), str(p)) for p in named]
    return tuple(roots)


def refusal(roots: Sequence[DatasetRoot]) -> StudioError:
    """The one line for a folder outside the roots (whether or not it exists)."""
    names = "; ".join(r.label for r in roots)
    return StudioError(
        f"server folders must be inside a dataset root: {names}. Put the clips there, or start the "
        "studio with --dataset-root FOLDER"
    )


def resolve_server_folder(text: str, roots: Sequence[DatasetRoot]) -> tuple[Path, DatasetRoot]:
    """The folder ``text`` names (relative names are under the first root), checked against the roots.

    Raises:
        StudioError: outside every root (after links), or not a folder inside its root.
    """
    raw = Path(text.strip())
    candidate = raw if raw.is_absolute() else roots[0].path / raw
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError):
        raise refusal(roots) from None
    for root in roots:
        try:
            base = root.path.resolve()
        except (OSError, RuntimeError):
            continue
        if resolved.is_relative_to(base):
            if not resolved.is_dir():
                shown = resolved.relative_to(base).as_posix()
                raise StudioError(f"there is no folder {shown!r} in the dataset root {root.label}")
            return resolved, root
    raise refusal(roots)


def audio_files_in(folder: Path, root: DatasetRoot) -> tuple[list[Path], int]:
    """The audio files under ``folder`` (links not followed out of ``root``) and how many were ignored.

    Hidden entries are left out; so is every file whose resolved path leaves the root.

    Raises:
        StudioError: more audio files than the dataset limit, or none at all.
    """
    base = root.path.resolve()
    found: list[Path] = []
    ignored = 0
    for top, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(top) / name
            if name.startswith(".") or path.suffix.lower() not in AUDIO_SUFFIXES:
                ignored += 1
                continue
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):
                ignored += 1
                continue
            if not real.is_relative_to(base) or not real.is_file():
                ignored += 1
                continue
            found.append(real)
            if len(found) > DATASET_LIMITS.max_files:
                raise StudioError(
                    f"the folder holds more than {DATASET_LIMITS.max_files} audio files; "
                    "use fewer, longer files"
                )
    if not found:
        raise StudioError(
            f"the folder holds no audio files ({ignored} other files ignored); accepted types: "
            + ", ".join(sorted(AUDIO_SUFFIXES))
        )
    return found, ignored
