"""Read checkpoint files as data, never as code.

Two readers:

* :func:`load_checkpoint` is ``torch.load(weights_only=True)`` with errors turned into
  :class:`~infer.errors.UnsafeFileError` / :class:`~infer.errors.ModelLoadError`. It fits
  every file that holds only containers, numbers, strings and tensors (RVC ``.pth``,
  ``rmvpe.pt``, Timbre's own files).
* :func:`load_checkpoint_stubbed` reads the torch zip format with its own unpickler for
  files that also pickle foreign classes (fairseq's ``hubert_base.pt`` references
  ``fairseq.data.dictionary.Dictionary``, ``argparse.Namespace``...). Tensors and plain
  containers are rebuilt; every other class becomes an inert :class:`Stub` that records
  its arguments and runs nothing. No global outside a short allow-list is ever imported.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from infer.errors import ModelLoadError, UnsafeFileError

log = logging.getLogger(__name__)

MAX_CHECKPOINT_BYTES = 8 << 30
"""Default cap on the tensor bytes one checkpoint may declare (``$TIMBRE_MAX_CHECKPOINT_BYTES``)."""
CHECKPOINT_CAP_ENV = "TIMBRE_MAX_CHECKPOINT_BYTES"
LEGACY_SLACK_BYTES = 1 << 20
"""How far a legacy file's declared storages may exceed its size (record headers, rounding)."""

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


def load_checkpoint(path: str | Path) -> Any:
    """Load a torch file that must contain only data; refuse anything that would run code."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty (0 bytes); download or export it again")
    if not _looks_like_torch_file(path):
        raise ModelLoadError(
            f"{path.name}: not a readable PyTorch checkpoint (neither a torch zip archive nor a pickle); "
            "check that you picked the .pth model file"
        )
    check_declared_size(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path.name}: refused to load: the file's pickle asks for code or classes that a "
            f"model file never needs ({_first_line(exc)}). Only load model files you trust; "
            "this one was not executed."
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path.name}: not a readable PyTorch checkpoint ({_first_line(exc)}); the file may be "
            "truncated or of another format"
        ) from exc


class Stub:
    """Inert stand-in for a class the file names but Timbre does not need."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Stub({self.stub_name})"

    stub_name = "?"


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: torch.Tensor,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_rest: Any,
) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), storage_offset)


def _rebuild_parameter(data: torch.Tensor, *_rest: Any) -> torch.Tensor:
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}


class _StubbingUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._source = source
        self._storages: dict[str, torch.Tensor] = {}
        self.stubbed: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in ("float16", "float32", "bfloat16", "float64"):
            return getattr(torch, name)
        qualified = f"{module}.{name}"
        self.stubbed.add(qualified)
        return type(name, (Stub,), {"stub_name": qualified, "__module__": "infer.safeload.stubs"})

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafeFileError(f"{self._source}: unexpected persistent id {pid!r:.80}")
        storage_type, key, _location, _numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeFileError(f"{self._source}: storage of unknown type {storage_type!r:.80}")
        key = str(key)
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError as exc:
                raise ModelLoadError(f"{self._source}: missing tensor data {key!r}") from exc
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            self._storages[key] = flat.view(storage_type.dtype) if raw else flat
        return self._storages[key]


def load_checkpoint_stubbed(path: str | Path) -> Any:
    """Load a torch zip checkpoint whose pickle names foreign classes, as inert data.

    Returns the unpickled object; instances of classes outside the allow-list are
    :class:`Stub` objects. Nothing from the file is imported or executed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(
            f"{path.name}: not a PyTorch zip checkpoint ({_first_line(exc)}). Files in the "
            "pre-1.6 torch format must be re-saved with a current torch first."
        ) from exc
    with archive:
        declared = _check_zip_records(archive, path)
        if declared > min(path.stat().st_size, checkpoint_cap_bytes()):
            check_declared_size(path)  # raises, saying which limit
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ModelLoadError(f"{path.name}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        unpickler = _StubbingUnpickler(archive.read(pickles[0]), archive, prefix, path.name)
        try:
            obj = unpickler.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{path.name}: cannot read the checkpoint ({_first_line(exc)})") from exc
    if unpickler.stubbed:
        log.debug("%s: stubbed classes %s", path.name, sorted(unpickler.stubbed))
    return obj


def checkpoint_cap_bytes() -> int:
    """The configured cap on declared tensor bytes: ``$TIMBRE_MAX_CHECKPOINT_BYTES`` or the default."""
    raw = os.environ.get(CHECKPOINT_CAP_ENV, "").strip()
    if not raw:
        return MAX_CHECKPOINT_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ModelLoadError(f"{CHECKPOINT_CAP_ENV} must be a number of bytes, not {raw!r}") from None
    if value <= 0:
        raise ModelLoadError(f"{CHECKPOINT_CAP_ENV} must be positive, not {value}")
    return value


def check_declared_size(path: str | Path, cap_bytes: int | None = None) -> int:
    """Refuse a checkpoint that would take more memory than its file size and the cap allow.

    A torch zip is read record by record as the archive declares them: every record must be
    stored (torch never compresses; a deflated record can unpack to gigabytes from a few
    megabytes), and the declared sizes must fit in the file and under the cap. A legacy
    (pickle) file's storages are summed from its pickle, read as data, and must fit likewise.
    Nothing is loaded; this reads the archive's directory or the pickle stream only.

    Args:
        path: the ``.pth``/``.pt``/``.ckpt`` file.
        cap_bytes: the most tensor bytes allowed; None = :func:`checkpoint_cap_bytes`.

    Returns:
        The declared bytes.

    Raises:
        UnsafeFileError: a compressed record, or declared sizes beyond the file or the cap.
        ModelLoadError: the file cannot be read.
    """
    path = Path(path)
    cap = checkpoint_cap_bytes() if cap_bytes is None else cap_bytes
    file_bytes = path.stat().st_size
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                declared = _check_zip_records(archive, path)
        except (zipfile.BadZipFile, OSError) as exc:
            detail = _first_line(exc)
            raise ModelLoadError(f"{path.name}: not a readable PyTorch checkpoint ({detail})") from exc
        limit = file_bytes
    else:
        declared = _legacy_declared_bytes(path)
        limit = file_bytes + LEGACY_SLACK_BYTES
    if declared > limit:
        raise UnsafeFileError(
            f"{path.name}: refused to load: it declares {declared} bytes of tensors but the file holds "
            f"only {file_bytes}; the file is damaged or built to exhaust memory"
        )
    if declared > cap:
        raise UnsafeFileError(
            f"{path.name}: refused to load: it declares {declared} bytes of tensors, more than the cap of "
            f"{cap} bytes (raise {CHECKPOINT_CAP_ENV} if you trust this file)"
        )
    return declared


def _check_zip_records(archive: zipfile.ZipFile, path: Path) -> int:
    """Sum the records' declared sizes; refuse a compressed record (see :func:`check_declared_size`)."""
    total = 0
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise UnsafeFileError(
                f"{path.name}: refused to load: record {info.filename!r} is compressed; torch writes "
                "every record stored, and a compressed one can unpack to far more memory than the file"
            )
        total += info.file_size
    return total


class _SizeCountingUnpickler(pickle.Unpickler):
    """Reads a legacy torch pickle as data, summing the storages it declares; builds nothing."""

    def __init__(self, handle: Any) -> None:
        super().__init__(handle)
        self.declared: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        return _Inert

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            storage_type, key, _location, numel = pid[1:5]
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else torch.uint8
            if isinstance(numel, int):
                itemsize = torch.empty((), dtype=dtype).element_size()
                self.declared[str(key)] = max(self.declared.get(str(key), 0), numel * itemsize)
        return None


class _Inert:
    """Whatever a legacy pickle names while its sizes are counted: accepts anything, does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        del state


def _legacy_declared_bytes(path: Path) -> int:
    """The storage bytes a legacy torch file's main pickle declares (magic, version, sys info first)."""
    with open(path, "rb") as handle:
        try:
            for _ in range(3):  # magic number, protocol version, system info
                _SizeCountingUnpickler(handle).load()
            counter = _SizeCountingUnpickler(handle)
            counter.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise ModelLoadError(
                f"{path.name}: not a readable PyTorch checkpoint ({_first_line(exc)}); the file may be "
                "truncated or of another format"
            ) from exc
    return sum(counter.declared.values())


def _looks_like_torch_file(path: Path) -> bool:
    """A torch zip archive, or a legacy torch file (it starts with a pickle protocol opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
