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
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from infer.errors import ModelLoadError, UnsafeFileError

log = logging.getLogger(__name__)

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


def _looks_like_torch_file(path: Path) -> bool:
    """A torch zip archive, or a legacy torch file (it starts with a pickle protocol opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
