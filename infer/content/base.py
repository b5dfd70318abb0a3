"""The content-encoder interface and the registry that finds encoders by name or path.

A content encoder turns 16 kHz mono audio into speaker-light "content" features at a fixed
frame rate. The synthesizer is trained on one encoder's features, so a voice model names the
encoder it needs (``hubert_base`` for RVC models) and :func:`load_content_encoder` resolves it.

Two tables:

* **names** (``hubert_base``...): a factory that finds its own files inside the pretrained
  folder;
* **readers**, keyed by the kind of file or folder (``torch`` for a ``.pt``/``.pth``/``.bin``
  checkpoint, or a transformers ``config.json`` ``model_type`` such as ``hubert``): a factory
  that opens a path the user picked.

Both take the same keyword arguments. Built-in encoders register themselves lazily, on the
first lookup, so importing this module has no side effects.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from infer.errors import ModelLoadError

log = logging.getLogger(__name__)

CONTENT_SAMPLE_RATE = 16000
TORCH_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
OUTPUT_PRESETS = ("v1", "v2")
_CACHE_SIZE = 2


@runtime_checkable
class ContentEncoder(Protocol):
    """Audio at 16 kHz in, content features out.

    Attributes:
        name: short label for logs and metadata.
        dim: feature size C.
        sample_rate: input sample rate in Hz.
        hop_length: input samples per output frame (320 = 50 frames/s at 16 kHz).
    """

    name: str
    dim: int
    sample_rate: int = CONTENT_SAMPLE_RATE
    hop_length: int = 320

    def encode(self, wav_16k: torch.Tensor) -> torch.Tensor:
        """Encode audio.

        Args:
            wav_16k: (B, L) float audio at ``sample_rate``, roughly in [-1, 1].

        Returns:
            (B, T, dim) float32 features, T = (L - 400) // 320 + 1 for HuBERT.
        """
        ...


class ContentEncoderFactory(Protocol):
    """Builds an encoder from a pretrained folder (named encoders) or a file/folder (readers)."""

    def __call__(
        self, source: Path, *, output: str, device: torch.device, dtype: torch.dtype
    ) -> ContentEncoder: ...


_FACTORIES: dict[str, ContentEncoderFactory] = {}
_READERS: dict[str, ContentEncoderFactory] = {}
_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple[object, ...], ContentEncoder] = OrderedDict()


def register_content_encoder(name: str, factory: ContentEncoderFactory, *, replace: bool = False) -> None:
    """Make ``load_content_encoder(name)`` call ``factory(pretrained_dir, ...)``.

    Raises:
        ValueError: the name is empty or already taken (and ``replace`` is False).
    """
    _register(_FACTORIES, name, factory, replace, "content encoder")


def register_content_reader(kind: str, factory: ContentEncoderFactory, *, replace: bool = False) -> None:
    """Make paths of this kind open with ``factory(path, ...)``.

    ``kind`` is ``"torch"`` for a torch checkpoint file, or the ``model_type`` in a
    transformers folder's ``config.json`` (``"hubert"``, ``"whisper"``...).
    """
    _register(_READERS, kind, factory, replace, "content reader")


def available_content_encoders() -> tuple[str, ...]:
    """Names accepted by :func:`load_content_encoder`, sorted."""
    _ensure_builtins()
    with _LOCK:
        return tuple(sorted(_FACTORIES))


def load_content_encoder(
    name_or_path: str | Path,
    *,
    output: str = "v2",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    pretrained_dir: str | Path | None = None,
    use_cache: bool = True,
) -> ContentEncoder:
    """Load a content encoder by registered name, checkpoint file or transformers folder.

    Args:
        name_or_path: a name from :func:`available_content_encoders` (looked up in
            ``pretrained_dir``), a torch checkpoint (``hubert_base.pt``, ContentVec), or a
            transformers-format folder (``config.json`` plus weights).
        output: feature preset: ``"v2"`` = last layer (768-d for HuBERT base), ``"v1"`` =
            layer 9 through ``final_proj`` (256-d).
        device: where the weights live and features are computed.
        dtype: weight dtype (float16 only makes sense on GPU).
        pretrained_dir: folder holding the base files; defaults to Timbre's ``pretrained/``.
        use_cache: reuse the last two loaded encoders when nothing changed on disk.

    Raises:
        ModelLoadError: unknown name, unreadable file, or a file that is not a content encoder.
        AssetError: a named encoder's file is missing from the pretrained folder.
    """
    if output not in OUTPUT_PRESETS:
        raise ValueError(f"output must be one of {OUTPUT_PRESETS}, got {output!r}")
    _ensure_builtins()
    torch_device = torch.device(device)
    text = str(name_or_path)
    with _LOCK:
        factory = _FACTORIES.get(text)
    if factory is not None:
        source = Path(pretrained_dir) if pretrained_dir is not None else _default_pretrained_dir()
        key_source: tuple[object, ...] = ("name", text, str(source.resolve()))
    else:
        source = Path(name_or_path)
        if not source.exists():
            known = ", ".join(available_content_encoders())
            raise ModelLoadError(
                f"content encoder {text!r} is neither a known name ({known}) nor an existing file or folder"
            )
        kind = content_source_kind(source)
        with _LOCK:
            factory = _READERS.get(kind)
        if factory is None:
            raise ModelLoadError(
                f"{source.name}: no content encoder reads {kind!r} checkpoints; "
                f"readable kinds: {', '.join(sorted(_READERS))}"
            )
        key_source = ("path", str(source.resolve()), _stat_key(source))
    key = (*key_source, output, str(torch_device), dtype)
    if use_cache:
        with _LOCK:
            cached = _CACHE.get(key)
            if cached is not None:
                _CACHE.move_to_end(key)
                return cached
    encoder = factory(source, output=output, device=torch_device, dtype=dtype)
    if use_cache:
        with _LOCK:
            _CACHE[key] = encoder
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return encoder


def clear_content_encoder_cache() -> None:
    """Forget cached encoders (frees their memory once no caller holds them)."""
    with _LOCK:
        _CACHE.clear()


def content_source_kind(path: Path) -> str:
    """Which reader opens ``path``: ``"torch"`` for a checkpoint file, else the folder's ``model_type``."""
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ModelLoadError(
                f"{path}: a content-encoder folder needs a transformers config.json next to its weights"
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{config_path}: not a readable JSON config ({exc})") from exc
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if not isinstance(model_type, str) or not model_type:
            raise ModelLoadError(
                f"{config_path}: no 'model_type' entry; is this a transformers model folder?"
            )
        return model_type
    if path.suffix.lower() in TORCH_CHECKPOINT_SUFFIXES:
        return "torch"
    raise ModelLoadError(
        f"{path.name}: unsupported content-encoder file type {path.suffix!r}; expected a torch checkpoint "
        f"({', '.join(TORCH_CHECKPOINT_SUFFIXES)}) or a transformers folder"
    )


def _register(
    table: dict[str, ContentEncoderFactory],
    key: str,
    factory: ContentEncoderFactory,
    replace: bool,
    what: str,
) -> None:
    if not key:
        raise ValueError(f"{what} key must be a non-empty string")
    with _LOCK:
        if key in table and not replace and table[key] is not factory:
            raise ValueError(f"{what} {key!r} is already registered; pass replace=True to override it")
        table[key] = factory


@functools.cache
def _ensure_builtins() -> None:
    from infer.content import hubert, whisper

    hubert.register_builtins()
    whisper.register_builtins()


def _default_pretrained_dir() -> Path:
    from infer.assets import default_pretrained_dir

    return Path(default_pretrained_dir())


def _stat_key(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
