"""Model zips: export one from the models folder, import the layouts people share (no ``train/`` needed).

An exported zip is flat::

    <name>.pth                                       the voice model (RVC inference format)
    added_IVF<n>_Flat_nprobe_1_<name>_<v1|v2>.index  the retrieval index, when the model has one
    timbre.json                                      metadata (rate, version, f0, encoder, epochs...)
    report.json / report.html / report.md            the training report, when present
    diffusion*.pt                                    diffusion refinement heads, when present
    live_student.pt                                  the causal live student, when present

Import accepts that layout and the common shared ones: the files inside one sub-folder, Applio's
``<name>.pth`` + ``<name>.index``, RVC's ``added_*.index`` / ``trained_*.index`` names, and extra
files (readme, images...) which are ignored. Every uploaded file is treated as data: the zip is
extracted with :func:`infer.ziputil.safe_extract_zip` into a hidden folder inside the models
folder, the ``.pth`` is read with the data-only loader and checked as a voice model, the index is
read and its width checked against the model, and only then is the model folder moved into place.
Nothing is written outside the models folder, and a failed import leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infer.catalog import (
    INDEX_SUFFIX,
    METADATA_FILE_NAME,
    MODEL_SUFFIX,
    REPORT_FILE_NAMES,
    ModelExistsError,
    delete_model,
    find_model,
    list_models,
    validate_model_name,
)
from infer.errors import TimbreError, UnsafeFileError

if TYPE_CHECKING:
    from infer.models import VoiceModel

log = logging.getLogger(__name__)

INCOMING_PREFIX = ".incoming-"
EXPORT_TEMP_PREFIX = "timbre-export-"
DIFFUSION_GLOB = "diffusion*.pt"
MAX_IMPORT_TOTAL_BYTES = 4 << 30
MAX_IMPORT_MEMBER_BYTES = 2 << 30
MAX_IMPORT_FILES = 1000
MAX_METADATA_BYTES = 1_000_000
STALE_STAGING_AGE_S = 24 * 3600.0
IMPORT_SUFFIXES = frozenset({MODEL_SUFFIX, INDEX_SUFFIX, ".json", ".pt", ".html", ".md"})
"""Suffixes extracted from an uploaded zip; anything else (images, readmes...) is skipped."""
_TRAINING_CHECKPOINT_PREFIXES = ("G_", "D_")
_IVF_RE = re.compile(r"IVF(\d+)")


class ModelImportError(TimbreError):
    """An uploaded model (zip or files) does not hold exactly one usable voice model."""


@dataclass(frozen=True)
class ImportLimits:
    """Limits applied while extracting an uploaded zip.

    Attributes:
        max_total_bytes: uncompressed size of all extracted members.
        max_files: number of file members.
        max_member_bytes: uncompressed size of one member.
    """

    max_total_bytes: int = MAX_IMPORT_TOTAL_BYTES
    max_files: int = MAX_IMPORT_FILES
    max_member_bytes: int = MAX_IMPORT_MEMBER_BYTES

    def __post_init__(self) -> None:
        for name in ("max_total_bytes", "max_files", "max_member_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ImportLimits.{name} must be a positive int, got {value!r}")


# --------------------------------------------------------------------------- metadata


def build_model_metadata(
    model: VoiceModel,
    *,
    name: str,
    existing: Mapping[str, Any] | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """The ``timbre.json`` contents for a voice model.

    Keys already in ``existing`` (an earlier ``timbre.json``) are kept; missing ones are filled
    from the model file. The name and the facts the weights decide (sample rate, version,
    use_f0) always come from ``name`` and the model.

    Args:
        model: a loaded :class:`infer.models.VoiceModel`.
        name: the model's name.
        existing: metadata to keep, or None.
        created_at: ISO 8601 creation time used when neither ``existing`` nor the file has one.

    Returns:
        A JSON-serialisable dict with at least name, sample_rate, version, use_f0,
        content_encoder, epochs, steps, dataset_duration_s, f0_method, created_at and info.
    """
    meta = model.metadata
    extra = meta.extra if isinstance(meta.extra, Mapping) else {}
    generated: dict[str, Any] = {
        "name": name,
        "sample_rate": model.config.sample_rate,
        "version": meta.version,
        "use_f0": model.config.use_f0,
        "content_encoder": meta.content_encoder,
        "epochs": meta.epochs,
        "steps": meta.steps,
        "dataset_duration_s": extra.get("dataset_duration_s"),
        "f0_method": extra.get("f0_method"),
        "created_at": extra.get("created_at") or created_at,
        "info": meta.info,
    }
    kept = {k: v for k, v in (existing or {}).items() if isinstance(k, str) and v is not None}
    merged = {**generated, **kept}
    merged.update(
        name=name,
        sample_rate=model.config.sample_rate,
        version=meta.version,
        use_f0=model.config.use_f0,
    )
    return merged


def _file_time_iso(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).isoformat(timespec="seconds")


def _read_metadata_file(path: Path) -> dict[str, Any]:
    """A ``timbre.json`` from an upload; an unreadable one is ignored (and regenerated)."""
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            log.warning("%s is larger than %d bytes; generating new metadata", path.name, MAX_METADATA_BYTES)
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring the unreadable %s (%s); generating new metadata", path.name, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("%s is not a JSON object; generating new metadata", path.name)
        return {}
    return data


def _index_name(index_path: Path, name: str, version: str, loaded_index: Any | None = None) -> str:
    """RVC's ``added_IVF<n>_Flat_nprobe_1_<name>_<version>.index`` for an index file."""
    from infer.retrieval import index_file_name, index_ivf_count, load_index

    if loaded_index is None:
        match = _IVF_RE.search(index_path.name)
        if match is not None:
            return index_file_name(int(match.group(1)), name, version)
        loaded_index = load_index(index_path).index
    try:
        n_ivf = index_ivf_count(loaded_index)
    except RuntimeError:
        # Not an IVF index (a flat one built elsewhere): keep an 'added_' name without the list count.
        return f"added_{name}_{version}{INDEX_SUFFIX}"
    return index_file_name(n_ivf, name, version)


# --------------------------------------------------------------------------- export


def export_model_zip(models_dir: str | os.PathLike[str], name: str, dest: Path | None = None) -> Path:
    """Pack model ``name`` from ``models_dir`` as a flat zip (see the module docstring).

    Args:
        models_dir: the models folder.
        name: the model's name.
        dest: the zip file to write, or an existing folder to write ``<name>.zip`` into;
            None writes ``<name>.zip`` into a new temporary folder.

    Returns:
        The written zip (written atomically: an existing file is replaced only when complete).

    Raises:
        ModelNotFoundError: no such model.
        ModelLoadError, UnsafeFileError: the model file cannot be read as a voice model.
    """
    from infer.fsutil import atomic_path
    from infer.models import load_voice_model
    from infer.student import student_path

    entry = find_model(models_dir, name)
    model = load_voice_model(entry.pth_path)
    metadata = build_model_metadata(
        model, name=name, existing=entry.metadata, created_at=_file_time_iso(entry.pth_path)
    )
    members: list[tuple[Path, str]] = [(entry.pth_path, f"{name}{MODEL_SUFFIX}")]
    if entry.index_path is not None:
        members.append((entry.index_path, _index_name(entry.index_path, name, metadata["version"])))
    if not entry.is_loose:
        members.extend((entry.folder / r, r) for r in REPORT_FILE_NAMES if (entry.folder / r).is_file())
        members.extend((p, p.name) for p in sorted(entry.folder.glob(DIFFUSION_GLOB)) if p.is_file())
        student = student_path(entry.folder)
        if student is not None:
            members.append((student, student.name))

    if dest is None:
        target = Path(tempfile.mkdtemp(prefix=EXPORT_TEMP_PREFIX)) / f"{name}.zip"
    else:
        dest = Path(dest)
        target = dest / f"{name}.zip" if dest.is_dir() else dest
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for path, arcname in members:
            # Weights and indexes barely compress; storing them keeps export fast.
            archive.write(path, arcname=arcname, compress_type=zipfile.ZIP_STORED)
        archive.writestr(
            METADATA_FILE_NAME,
            json.dumps(metadata, indent=2, sort_keys=True),
            compress_type=zipfile.ZIP_DEFLATED,
        )
    log.info("exported model %s to %s (%d files)", name, target, len(members) + 1)
    return target


# --------------------------------------------------------------------------- import


def import_model_zip(
    zip_path: str | os.PathLike[str],
    models_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    overwrite: bool = False,
    limits: ImportLimits | None = None,
) -> str:
    """Check and install a shared model zip as ``models_dir/<name>/``.

    Args:
        zip_path: the uploaded zip.
        models_dir: the models folder (created if missing).
        name: the model name; None uses the name in ``timbre.json``, else the ``.pth`` file stem.
        overwrite: replace an existing model of that name.
        limits: extraction limits; None uses :class:`ImportLimits` defaults.

    Returns:
        The installed model's name.

    Raises:
        UnsafeFileError: a member escapes the folder, is a link, is over a limit, or a pickle asks
            for code.
        ModelImportError: no ``.pth`` voice model, or more than one.
        ModelLoadError: the ``.pth`` is not a voice model, or the index is unreadable or of the
            wrong width.
        ModelExistsError: a model of that name exists and ``overwrite`` is False.
        InvalidModelNameError: the name cannot be a folder name.
    """
    from infer.student import STUDENT_FILENAME
    from infer.ziputil import safe_extract_zip

    zip_path = Path(zip_path)
    if name is not None:
        validate_model_name(name)
    limits = limits or ImportLimits()
    root = Path(models_dir)
    staging = _make_staging(root)
    try:
        result = safe_extract_zip(
            zip_path,
            staging / "extracted",
            max_total_bytes=limits.max_total_bytes,
            max_files=limits.max_files,
            max_member_bytes=limits.max_member_bytes,
            allowed_suffixes=IMPORT_SUFFIXES,
        )
        extracted_root = staging / "extracted"
        files = [p for p in result.extracted if p.is_file()]
        pth = _pick_voice_pth(files, extracted_root, zip_path.name)
        folder = pth.parent
        index = _pick_index(files, folder)
        metadata_path = folder / METADATA_FILE_NAME
        extras = [folder / r for r in REPORT_FILE_NAMES if (folder / r).is_file()]
        extras.extend(sorted(p for p in folder.glob(DIFFUSION_GLOB) if p.is_file()))
        if (folder / STUDENT_FILENAME).is_file():
            extras.append(folder / STUDENT_FILENAME)
        return _install(
            staging,
            root,
            _Staged(pth, index, metadata_path if metadata_path.is_file() else None, tuple(extras)),
            name=name,
            overwrite=overwrite,
            source=zip_path.name,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_model_files(
    pth_path: str | os.PathLike[str],
    index_path: str | os.PathLike[str] | None,
    models_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> str:
    """Check and install an uploaded ``.pth`` (and optional ``.index``) as ``models_dir/<name>/``.

    The files are copied (the originals are left alone), checked like a zip import and moved
    into place. ``name`` defaults to the ``.pth`` file stem.

    Returns:
        The installed model's name.

    Raises:
        ModelImportError: wrong file types or an empty file.
        UnsafeFileError, ModelLoadError, ModelExistsError, InvalidModelNameError: as
            :func:`import_model_zip`.
    """
    pth = Path(pth_path)
    index = Path(index_path) if index_path else None
    if pth.suffix.lower() != MODEL_SUFFIX or not pth.is_file():
        raise ModelImportError(f"{pth.name} is not a .pth file; choose the voice model's .pth")
    if pth.stat().st_size == 0:
        raise ModelImportError(f"{pth.name} is empty (0 bytes); the upload is broken, try again")
    if index is not None and (index.suffix.lower() != INDEX_SUFFIX or not index.is_file()):
        raise ModelImportError(f"{index.name} is not a .index file; choose the model's added_*.index")
    if name is not None:
        validate_model_name(name)
    root = Path(models_dir)
    staging = _make_staging(root)
    try:
        upload = staging / "upload"
        upload.mkdir()
        pth_copy = upload / pth.name
        shutil.copyfile(pth, pth_copy)
        index_copy = None
        if index is not None:
            index_copy = upload / index.name
            shutil.copyfile(index, index_copy)
        return _install(
            staging,
            root,
            _Staged(pth_copy, index_copy, None, ()),
            name=name or pth.stem,
            overwrite=overwrite,
            source=pth.name,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make_staging(root: Path) -> Path:
    """A fresh hidden staging folder inside ``root``; staging folders left by a killed import are removed."""
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for stale in root.glob(f"{INCOMING_PREFIX}*"):
        try:
            is_old = (
                stale.is_dir()
                and not stale.is_symlink()
                and now - stale.stat().st_mtime > STALE_STAGING_AGE_S
            )
        except OSError:
            continue
        if is_old:
            log.info("removing %s left by an interrupted import", stale)
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=INCOMING_PREFIX, dir=root))


def _relative_names(paths: Sequence[Path], base: Path) -> str:
    return ", ".join(str(p.relative_to(base)) for p in sorted(paths))


def _pick_voice_pth(files: Sequence[Path], base: Path, archive: str) -> Path:
    """The one voice-model ``.pth`` among the extracted files (G_/D_ checkpoints only as a fallback)."""
    pths = [p for p in files if p.suffix.lower() == MODEL_SUFFIX]
    voices = [p for p in pths if not p.name.startswith(_TRAINING_CHECKPOINT_PREFIXES)]
    if not voices:
        voices = [p for p in pths if p.name.startswith("G_")]
    if not voices:
        found = _relative_names(files, base) if files else "no model files at all"
        raise ModelImportError(
            f"{archive} holds no .pth voice model (found: {found}); "
            "a model zip needs the voice model's .pth file"
        )
    if len(voices) > 1:
        raise ModelImportError(
            f"{archive} holds {len(voices)} .pth files ({_relative_names(voices, base)}); a model zip must "
            "hold exactly one voice model: remove the others, or import the .pth you want on its own"
        )
    return voices[0]


def _pick_index(files: Sequence[Path], folder: Path) -> Path | None:
    """The index to install: beside the ``.pth`` first; ``added_*`` before others; never ``trained_*``."""
    indexes = [p for p in files if p.suffix.lower() == INDEX_SUFFIX]
    near = [p for p in indexes if p.parent == folder] or indexes
    added = sorted(p for p in near if p.name.startswith("added_"))
    plain = sorted(p for p in near if not p.name.startswith(("added_", "trained_")))
    candidates = added or plain
    if not candidates:
        if near:
            log.warning(
                "ignoring %s: a 'trained_' index holds no vectors; the model is imported without an index",
                ", ".join(p.name for p in near),
            )
        return None
    if len(candidates) > 1:
        shown = ", ".join(p.name for p in candidates)
        log.warning("several indexes found (%s); using %s", shown, candidates[0].name)
    return candidates[0]


def _check_free(root: Path, name: str, overwrite: bool) -> None:
    """Raise ModelExistsError when ``name`` is taken in ``root`` and ``overwrite`` is False."""
    if overwrite:
        return
    taken = (root / name).exists() or (root / name).is_symlink() or (root / f"{name}{MODEL_SUFFIX}").exists()
    if taken or any(e.name == name for e in list_models(root)):
        raise ModelExistsError(
            f"a model called {name!r} exists already; choose another name or allow overwriting it"
        )


@dataclass(frozen=True)
class _Staged:
    """The files of one upload, extracted or copied into the staging folder."""

    pth: Path
    index: Path | None
    metadata_path: Path | None
    extras: tuple[Path, ...]


def _install(
    staging: Path,
    root: Path,
    staged: _Staged,
    *,
    name: str | None,
    overwrite: bool,
    source: str,
) -> str:
    """Validate the staged files and move them into ``root/<name>/``; returns the name."""
    pth, index, metadata_path, extras = staged.pth, staged.index, staged.metadata_path, staged.extras
    from infer.fsutil import atomic_write_text
    from infer.models import load_voice_model
    from infer.retrieval import check_dim, load_index
    from infer.safeload import load_checkpoint

    if name is not None:
        _check_free(root, name, overwrite)
    model = load_voice_model(pth)
    loaded_index = None
    if index is not None:
        loaded = load_index(index)
        check_dim(loaded, model.config.content_dim)
        loaded_index = loaded.index
    from infer.diffusion.head import HEAD_FILENAMES, check_head_file
    from infer.student import STUDENT_FILENAME, load_student

    for extra in extras:
        if extra.suffix == ".pt":
            try:
                load_checkpoint(extra)
            except UnsafeFileError as exc:
                raise UnsafeFileError(f"{source}: {extra.name} is not plain data: {exc}") from exc
        if extra.name == STUDENT_FILENAME:
            load_student(extra)  # format, config and weights, or a one-line ModelLoadError
        if extra.name in HEAD_FILENAMES.values():
            config = model.config
            check_head_file(
                extra,
                latent_channels=config.inter_channels,
                content_dim=config.content_dim,
                gin_channels=config.gin_channels,
            )
    existing = _read_metadata_file(metadata_path) if metadata_path is not None else {}
    final_name = name
    if final_name is None:
        stored = existing.get("name")
        final_name = stored if isinstance(stored, str) and _is_valid_name(stored) else pth.stem
    validate_model_name(final_name)
    _check_free(root, final_name, overwrite)

    out = staging / "model"
    out.mkdir()
    version = model.metadata.version
    os.replace(pth, out / f"{final_name}{MODEL_SUFFIX}")
    if index is not None:
        os.replace(index, out / _index_name(index, final_name, version, loaded_index))
    for extra in extras:
        os.replace(extra, out / extra.name)
    metadata = build_model_metadata(
        model,
        name=final_name,
        existing=existing,
        created_at=datetime.now(tz=UTC).isoformat(timespec="seconds"),
    )
    atomic_write_text(out / METADATA_FILE_NAME, json.dumps(metadata, indent=2, sort_keys=True))

    target = root / final_name
    if overwrite:
        if target.exists() or target.is_symlink():
            is_model = any(e.name == final_name and not e.is_loose for e in list_models(root))
            if not is_model or not (target.is_dir() or target.is_symlink()):
                raise ModelExistsError(
                    f"{target} exists and is not a model folder, so it is not overwritten; "
                    "move it away or choose another name"
                )
            # Moved into the staging folder, which is removed once the new model is in place.
            os.replace(target, staging / "previous")
        elif (root / f"{final_name}{MODEL_SUFFIX}").is_file():
            delete_model(root, final_name)
    os.replace(out, target)
    log.info("imported model %s from %s into %s", final_name, source, root)
    return final_name


def _is_valid_name(name: str) -> bool:
    try:
        validate_model_name(name)
    except TimbreError:
        return False
    return True


__all__ = [
    "ImportLimits",
    "ModelImportError",
    "build_model_metadata",
    "export_model_zip",
    "import_model_files",
    "import_model_zip",
]
