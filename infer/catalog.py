"""The models folder: find voice models, read their metadata, rename, delete and add them.

Layout under the models folder (see :func:`resolve_models_dir`)::

    models/<name>/<name>.pth          the voice model (RVC or Timbre)
    models/<name>/added_*.index       optional faiss index (any ``*.index`` but ``trained_*``)
    models/<name>/timbre.json         optional metadata written by Timbre's training
    models/<name>/diffusion*.pt       optional diffusion refinement head
    models/<name>/report.html         optional training report (or report.md / report.json)
    models/<name>.pth                 a loose model straight in the folder; its index is
                                      <name>.index, added_<name>.index or RVC's
                                      added_IVF*_Flat_nprobe_*_<name>_v2.index

Nothing here imports torch: listing reads file names, sizes and ``timbre.json`` only.
Renames and deletes act only on entries directly inside the models folder; a model folder
that is a symbolic link is renamed or unlinked as a link, never followed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infer.errors import ModelLoadError, TimbreError, UnsafeFileError
from infer.home import home_dir

log = logging.getLogger(__name__)

MODELS_DIR_ENV_VAR = "TIMBRE_MODELS_DIR"
DATA_DIR_ENV_VAR = "TIMBRE_DATA_DIR"
DEFAULT_DATA_DIR_NAME = "data"
DEFAULT_MODELS_DIR_NAME = "models"
METADATA_FILE_NAME = "timbre.json"
MODEL_SUFFIX = ".pth"
INDEX_SUFFIX = ".index"
REPORT_FILE_NAMES = ("report.html", "report.md", "report.json")
MAX_MODEL_NAME_CHARS = 64
MAX_METADATA_BYTES = 1_000_000
_FORBIDDEN_NAME_CHARS = frozenset('/\\:*?"<>|')
# RVC names its index ``added_IVF<n>_Flat_nprobe_<k>_<experiment>_<v1|v2>.index``.
_RVC_INDEX_RE = re.compile(r"^added_IVF\d+_Flat_nprobe_\d+_(?P<name>.+)_v[12]$")


class InvalidModelNameError(TimbreError):
    """A model or experiment name cannot be used as a folder name."""


class ModelNotFoundError(TimbreError):
    """No model of that name in the models folder."""


class ModelExistsError(TimbreError):
    """A model of that name is already in the models folder."""


@dataclass(frozen=True)
class ModelEntry:
    """One voice model found in the models folder.

    Attributes:
        name: the model's name (folder name, or file stem for a loose ``.pth``).
        folder: the model's folder; for a loose model, the models folder itself.
        pth_path: the voice model file.
        index_path: the faiss index, or None.
        metadata: contents of ``timbre.json`` (empty when absent or unreadable).
        size_bytes: bytes on disk of the model's files.
        has_diffusion: True when a ``diffusion*.pt`` head is there or the metadata says so.
        report_path: the training report, or None.
        is_loose: True for a ``<name>.pth`` lying directly in the models folder.
    """

    name: str
    folder: Path
    pth_path: Path
    index_path: Path | None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    size_bytes: int = 0
    has_diffusion: bool = False
    report_path: Path | None = None
    is_loose: bool = False


def _resolve_dir(cli_value: str | os.PathLike[str] | None, env_var: str, default_name: str) -> Path:
    if cli_value is not None and str(cli_value).strip():
        return Path(cli_value).expanduser().absolute()
    override = os.environ.get(env_var, "").strip()
    if override:
        return Path(override).expanduser().absolute()
    return home_dir() / default_name


def resolve_models_dir(cli_value: str | os.PathLike[str] | None) -> Path:
    """The models folder: ``cli_value``, else ``$TIMBRE_MODELS_DIR``, else ``models/`` in the home folder.

    The home folder is ``$TIMBRE_HOME``, else the current directory (see :mod:`infer.home`).
    """
    return _resolve_dir(cli_value, MODELS_DIR_ENV_VAR, DEFAULT_MODELS_DIR_NAME)


def resolve_data_dir(cli_value: str | os.PathLike[str] | None) -> Path:
    """The data folder (jobs, experiments): ``cli_value``, else ``$TIMBRE_DATA_DIR``, else ``<home>/data``."""
    return _resolve_dir(cli_value, DATA_DIR_ENV_VAR, DEFAULT_DATA_DIR_NAME)


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is usable as a model folder name, else raise InvalidModelNameError."""
    if not isinstance(name, str) or not name:
        raise InvalidModelNameError("the model name is empty; type a name such as 'alice_v2'")
    shown = repr(name[:80])
    if name != name.strip():
        raise InvalidModelNameError(f"model name {shown} starts or ends with spaces; remove them")
    if len(name) > MAX_MODEL_NAME_CHARS:
        raise InvalidModelNameError(
            f"model name {shown} has {len(name)} characters; use at most {MAX_MODEL_NAME_CHARS}"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidModelNameError(f"model name {shown} contains control characters; use plain text")
    bad = sorted(set(name) & _FORBIDDEN_NAME_CHARS)
    if bad:
        raise InvalidModelNameError(
            f"model name {shown} contains {' '.join(bad)}; slashes and the characters "
            '\\ : * ? " < > | cannot be used in a name'
        )
    if ".." in name:
        raise InvalidModelNameError(f"model name {shown} contains '..'; use single dots only")
    if name.startswith("."):
        raise InvalidModelNameError(f"model name {shown} starts with a dot; such names are hidden files")
    return name


def _read_metadata(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            log.warning("%s is larger than %d bytes; ignoring it", path, MAX_METADATA_BYTES)
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("cannot read model metadata %s (%s); ignoring it", path, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("model metadata %s is not a JSON object; ignoring it", path)
        return {}
    return data


def _folder_size_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder, followlinks=False):
        for file_name in files:
            try:
                total += os.stat(os.path.join(root, file_name)).st_size
            except OSError:
                continue
    return total


def _pick_index(candidates: list[Path]) -> Path | None:
    """Prefer RVC's ``added_*.index``; never the vector-less ``trained_*.index``."""
    usable = sorted(p for p in candidates if p.is_file() and not p.name.startswith("trained_"))
    added = [p for p in usable if p.name.startswith("added_")]
    if added:
        return added[0]
    return usable[0] if usable else None


def _pick_pth(folder: Path, name: str) -> Path | None:
    own = folder / f"{name}{MODEL_SUFFIX}"
    if own.is_file():
        return own
    others = sorted(
        p for p in folder.glob(f"*{MODEL_SUFFIX}") if p.is_file() and not p.name.startswith(("G_", "D_", "."))
    )
    return others[0] if len(others) == 1 else None


def _has_diffusion(folder: Path, metadata: Mapping[str, Any]) -> bool:
    if metadata.get("has_diffusion") is True:
        return True
    return any(p.is_file() for p in folder.glob("diffusion*.pt"))


def _folder_entry(folder: Path) -> ModelEntry | None:
    name = folder.name
    pth = _pick_pth(folder, name)
    if pth is None:
        return None
    metadata = _read_metadata(folder / METADATA_FILE_NAME)
    report = next((folder / r for r in REPORT_FILE_NAMES if (folder / r).is_file()), None)
    return ModelEntry(
        name=name,
        folder=folder,
        pth_path=pth,
        index_path=_pick_index(list(folder.glob(f"*{INDEX_SUFFIX}"))),
        metadata=metadata,
        size_bytes=_folder_size_bytes(folder),
        has_diffusion=_has_diffusion(folder, metadata),
        report_path=report,
    )


def _loose_index(models_dir: Path, stem: str) -> Path | None:
    own = models_dir / f"{stem}{INDEX_SUFFIX}"
    if own.is_file():
        return own
    candidates = [models_dir / f"added_{stem}{INDEX_SUFFIX}"]
    for path in models_dir.glob(f"added_IVF*{INDEX_SUFFIX}"):
        match = _RVC_INDEX_RE.match(path.stem)
        if match is not None and match.group("name") == stem:
            candidates.append(path)
    return _pick_index(candidates)


def _loose_entry(models_dir: Path, pth: Path) -> ModelEntry:
    index = _loose_index(models_dir, pth.stem)
    size = pth.stat().st_size + (index.stat().st_size if index is not None else 0)
    return ModelEntry(
        name=pth.stem,
        folder=models_dir,
        pth_path=pth,
        index_path=index,
        metadata={},
        size_bytes=size,
        has_diffusion=False,
        report_path=None,
        is_loose=True,
    )


def list_models(models_dir: str | os.PathLike[str]) -> list[ModelEntry]:
    """Every model in ``models_dir``, sorted by name (case-insensitive); [] if it does not exist."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    found: dict[str, ModelEntry] = {}
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        entry = _folder_entry(child)
        if entry is not None:
            found[entry.name] = entry
    for child in sorted(root.glob(f"*{MODEL_SUFFIX}")):
        if child.name.startswith(".") or not child.is_file():
            continue
        if child.stem in found:
            log.warning("ignoring %s: a model folder of the same name exists", child)
            continue
        found[child.stem] = _loose_entry(root, child)
    return sorted(found.values(), key=lambda e: (e.name.casefold(), e.name))


def find_model(models_dir: str | os.PathLike[str], name: str) -> ModelEntry:
    """The model called ``name``, or ModelNotFoundError."""
    validate_model_name(name)
    for entry in list_models(models_dir):
        if entry.name == name:
            return entry
    raise ModelNotFoundError(
        f"no model called {name!r} in {models_dir}; refresh the model list or check --models-dir"
    )


def _check_inside(models_dir: Path, path: Path) -> None:
    """Refuse to touch anything that is not directly inside the models folder."""
    if path.parent.resolve() != models_dir.resolve() or path.name in ("", ".", ".."):
        raise UnsafeFileError(f"{path} is not directly inside the models folder {models_dir}; left alone")


def _check_free(models_dir: Path, name: str) -> None:
    taken = any(e.name == name for e in list_models(models_dir))
    if taken or (models_dir / name).exists() or (models_dir / f"{name}{MODEL_SUFFIX}").exists():
        raise ModelExistsError(f"a model called {name!r} exists already; pick another name or delete it")


def rename_model(models_dir: str | os.PathLike[str], old: str, new: str) -> ModelEntry:
    """Rename model ``old`` to ``new`` (folder, its ``<old>.pth`` and the metadata's name)."""
    root = Path(models_dir)
    validate_model_name(new)
    entry = find_model(root, old)
    if new == old:
        return entry
    _check_free(root, new)
    if entry.is_loose:
        _check_inside(root, entry.pth_path)
        entry.pth_path.rename(root / f"{new}{MODEL_SUFFIX}")
        if entry.index_path is not None:
            _check_inside(root, entry.index_path)
            target = root / f"{new}{INDEX_SUFFIX}"
            if not target.exists():
                entry.index_path.rename(target)
        log.info("renamed loose model %s to %s", old, new)
        return find_model(root, new)
    _check_inside(root, entry.folder)
    new_folder = root / new
    entry.folder.rename(new_folder)
    if not new_folder.is_symlink():
        old_pth = new_folder / entry.pth_path.name
        if old_pth.name == f"{old}{MODEL_SUFFIX}":
            old_pth.rename(new_folder / f"{new}{MODEL_SUFFIX}")
        meta_path = new_folder / METADATA_FILE_NAME
        metadata = _read_metadata(meta_path)
        if metadata.get("name") == old:
            metadata["name"] = new
            tmp = meta_path.with_name(meta_path.name + ".tmp")
            tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True), encoding="utf-8")
            os.replace(tmp, meta_path)
    log.info("renamed model %s to %s", old, new)
    return find_model(root, new)


def delete_model(models_dir: str | os.PathLike[str], name: str) -> None:
    """Delete model ``name``: its folder (a symlinked folder: only the link) or its loose files."""
    root = Path(models_dir)
    entry = find_model(root, name)
    if entry.is_loose:
        for path in (entry.pth_path, entry.index_path):
            if path is not None:
                _check_inside(root, path)
                path.unlink()
    else:
        _check_inside(root, entry.folder)
        if entry.folder.is_symlink():
            entry.folder.unlink()
        else:
            shutil.rmtree(entry.folder)
    log.info("deleted model %s from %s", name, root)


def add_model_files(
    models_dir: str | os.PathLike[str],
    name: str,
    pth_path: str | os.PathLike[str],
    index_path: str | os.PathLike[str] | None = None,
) -> ModelEntry:
    """Copy a ``.pth`` (and optional ``.index``) into ``models/<name>/`` as a new model.

    The files are copied as data; nothing is loaded here (loading goes through safeload).
    """
    root = Path(models_dir)
    validate_model_name(name)
    pth = Path(pth_path)
    if pth.suffix.lower() != MODEL_SUFFIX or not pth.is_file():
        raise ModelLoadError(f"{pth.name} is not a .pth file; choose the model's .pth")
    if pth.stat().st_size == 0:
        raise ModelLoadError(f"{pth.name} is empty (0 bytes); the upload is broken, try again")
    index = Path(index_path) if index_path else None
    if index is not None and (index.suffix.lower() != INDEX_SUFFIX or not index.is_file()):
        raise ModelLoadError(f"{index.name} is not a .index file; choose the model's added_*.index")
    _check_free(root, name)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{name}.importing"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        shutil.copyfile(pth, staging / f"{name}{MODEL_SUFFIX}")
        if index is not None:
            index_name = index.name if index.name.startswith("added_") else f"added_{name}{INDEX_SUFFIX}"
            shutil.copyfile(index, staging / index_name)
        os.replace(staging, root / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("added model %s to %s", name, root)
    return find_model(root, name)
