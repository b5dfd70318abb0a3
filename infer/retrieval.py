"""Feature retrieval: load a faiss index of training features and blend nearest neighbours into a query.

This follows RVC's inference use of the ``added_*.index`` file: ``k = 8`` nearest neighbours by
squared L2 distance, weights ``(1 / score) ** 2`` normalised per row, a weighted sum of the indexed
vectors, then a linear mix with the query by ``index_rate``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import ModelLoadError, UnsafeFileError

log = logging.getLogger(__name__)

DEFAULT_K = 8
INDEX_CACHE_SIZE = 4
INDEX_HEADER_BYTES = 16
MAX_INDEX_DIM = 1 << 16
"""Content features are 256 to 1024 wide; a header naming more is not an index of Timbre's."""
MAX_INDEX_EXPANSION = 64
"""How many times its file size an index's float32 vectors may be (product-quantised codes are
smaller than the vectors; IVF,Flat ones, which training writes, are the vectors)."""
BLEND_BLOCK_ROWS = 1024
"""Query rows processed at once, bounding the (rows, k, C) gather to a few tens of MB."""


@dataclass(frozen=True, eq=False)
class RetrievalIndex:
    """A loaded faiss index plus its vectors in id order (RVC's ``big_npy``).

    Attributes:
        index: the faiss index as read from the file (its stored ``nprobe`` is kept).
        vectors: (N, C) float32, read-only, ``index.reconstruct_n(0, N)``.
        path: the resolved file path it was read from.
    """

    index: Any
    vectors: np.ndarray
    path: Path

    @property
    def dim(self) -> int:
        """Feature dimension C of the indexed vectors."""
        return int(self.vectors.shape[1])

    @property
    def size(self) -> int:
        """Number of indexed vectors N."""
        return int(self.vectors.shape[0])


@dataclass(frozen=True, eq=False)
class RetrievalResult:
    """Raw neighbour search and blend terms for T query frames.

    Attributes:
        score: (T, k) float32 squared L2 distances from faiss (3.4e38 where no neighbour was found).
        ix: (T, k) int64 vector ids (-1 where no neighbour was found).
        weight: (T, k) float32 normalised blend weights; rows sum to 1, or are all 0 where nothing
            was found.
        retrieved: (T, C) float32 weighted sum of neighbours; the query row itself where nothing was
            found.
    """

    score: np.ndarray
    ix: np.ndarray
    weight: np.ndarray
    retrieved: np.ndarray


def load_index(path: str | Path) -> RetrievalIndex:
    """Read a faiss index file and reconstruct its vectors; cached on (path, mtime, size).

    Args:
        path: an ``added_*.index`` file written by RVC or Timbre training.

    Returns:
        The loaded index. Repeated calls for an unchanged file return the same object.

    Raises:
        ModelLoadError: the file is missing, is not a faiss index, holds no vectors, or its vectors
            cannot be reconstructed.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"index file not found: {resolved}; pick an existing .index file") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read index file {resolved}: {exc}") from exc
    if not resolved.is_file():
        raise ModelLoadError(f"{resolved} is not a file; pick the .index file itself")
    return _load_index_cached(str(resolved), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=INDEX_CACHE_SIZE)
def _load_index_cached(path_str: str, mtime_ns: int, size_bytes: int) -> RetrievalIndex:
    """Uncached body of :func:`load_index`; the stat values only key the cache."""
    import faiss

    path = Path(path_str)
    if size_bytes == 0:
        raise ModelLoadError(
            f"{path.name} is an empty file, not a faiss index; pick the training's .index file"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read index file {path}: {exc}") from exc
    check_index_header(data, path.name)
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except (RuntimeError, MemoryError) as exc:
        raise ModelLoadError(
            f"{path.name} is not a faiss index (faiss says: {_first_line(exc)}); "
            "pick the 'added_*.index' file that training wrote"
        ) from exc
    if index.ntotal == 0:
        raise ModelLoadError(
            f"{path.name} is an empty faiss index (0 vectors): it was saved before any vectors were "
            "added, like RVC's 'trained_*.index'; pick the 'added_*.index' file instead"
        )
    try:
        vectors = np.ascontiguousarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{path.name}: this faiss index type cannot return its stored vectors "
            f"({_first_line(exc)}); rebuild it as an IVF,Flat index"
        ) from exc
    vectors.setflags(write=False)
    log.info("loaded index %s: %d vectors of dim %d", path.name, vectors.shape[0], vectors.shape[1])
    return RetrievalIndex(index=index, vectors=vectors, path=path)


def check_index_header(data: bytes, name: str, cap_bytes: int | None = None) -> None:
    """Refuse an index whose header declares more vectors than the file or the cap can hold.

    Every faiss index starts with a four-letter code, ``d`` (int32) and ``ntotal`` (int64).
    Loading reconstructs ``ntotal x d`` float32 vectors; a file declaring far more than it
    holds is refused before faiss reads it. The codes of a flat index take ``d x 4`` bytes per
    vector and compressed ones less, so the vectors may be at most
    :data:`MAX_INDEX_EXPANSION` times the file size, and never more than the checkpoint cap
    (see :func:`infer.safeload.checkpoint_cap_bytes`).

    Raises:
        UnsafeFileError: the header declares too much.
        ModelLoadError: the file is too short to be an index.
    """
    from infer.safeload import checkpoint_cap_bytes

    if len(data) < INDEX_HEADER_BYTES:
        raise ModelLoadError(f"{name} is too short to be a faiss index; pick the training's .index file")
    dim = int.from_bytes(data[4:8], "little", signed=True)
    ntotal = int.from_bytes(data[8:16], "little", signed=True)
    if not 0 < dim <= MAX_INDEX_DIM or ntotal < 0:
        raise ModelLoadError(
            f"{name} is not a faiss index (its header reads dimension {dim}); "
            "pick the 'added_*.index' file that training wrote"
        )
    declared = dim * ntotal * 4
    cap = checkpoint_cap_bytes() if cap_bytes is None else cap_bytes
    if declared > min(cap, len(data) * MAX_INDEX_EXPANSION):
        raise UnsafeFileError(
            f"{name}: refused to load: it declares {ntotal} vectors of dimension {dim} ({declared} bytes) "
            f"in a {len(data)}-byte file; the file is damaged or built to exhaust memory"
        )


def _first_line(exc: BaseException) -> str:
    """The most informative short line of a faiss exception message."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def check_dim(index: RetrievalIndex, content_dim: int) -> None:
    """Raise if the index's feature dimension differs from the model's content dimension.

    Raises:
        ModelLoadError: naming both dimensions (e.g. a 256-d v1 index with a 768-d v2 model).
    """
    if index.dim != content_dim:
        raise ModelLoadError(
            f"index {index.path.name} holds {index.dim}-dim features but the voice model uses "
            f"{content_dim}-dim content features (e.g. a v1 index with a v2 model); "
            "use the index that was trained together with this model"
        )


def retrieve(feats: np.ndarray, index: RetrievalIndex, *, k: int = DEFAULT_K) -> RetrievalResult:
    """Search the ``k`` nearest indexed vectors of each frame and form their weighted sum.

    Weights are ``(1 / score) ** 2`` (score = squared L2 distance) normalised per row, computed in
    float32 like RVC. Two cases where RVC yields NaN or relies on luck are made deterministic:

    * ``score == 0`` (a frame equals an indexed vector) or any weight overflowing float32: the row's
      weight is split equally among the neighbours at the row's smallest score, so an exact match
      retrieves that vector.
    * ``ix == -1`` (faiss found fewer than ``k`` vectors in the probed lists): those slots get weight
      0 (RVC reads ``big_npy[-1]`` with a weight that underflows to 0, the same result). A row with
      no neighbour at all retrieves the query row itself, so blending leaves it unchanged.

    Args:
        feats: (T, C) float32 content features.
        index: the loaded index; its ``dim`` must equal C.
        k: neighbours per frame.

    Returns:
        The search results and blend terms; see :class:`RetrievalResult`.
    """
    query = _as_query(feats, index)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_rows = query.shape[0]
    if n_rows == 0:
        empty = np.zeros((0, k), dtype=np.float32)
        return RetrievalResult(empty, np.zeros((0, k), np.int64), empty.copy(), query.copy())
    score, ix = index.index.search(query, k)
    score = np.asarray(score, dtype=np.float32)
    ix = np.asarray(ix, dtype=np.int64)
    weight = _blend_weights(score, ix)
    retrieved = np.empty_like(query)
    safe_ix = np.where(ix >= 0, ix, 0)
    for start in range(0, n_rows, BLEND_BLOCK_ROWS):
        rows = slice(start, start + BLEND_BLOCK_ROWS)
        gathered = index.vectors[safe_ix[rows]]
        retrieved[rows] = np.sum(gathered * weight[rows][:, :, None], axis=1)
    no_neighbour = ~(ix >= 0).any(axis=1)
    if no_neighbour.any():
        log.warning("%d frames found no index neighbour; they keep their own features", no_neighbour.sum())
        retrieved[no_neighbour] = query[no_neighbour]
    return RetrievalResult(score=score, ix=ix, weight=weight, retrieved=retrieved)


def _blend_weights(score: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """(T, k) float32 normalised inverse-square-distance weights with the edge cases of :func:`retrieve`."""
    valid = ix >= 0
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        weight = np.square(np.float32(1.0) / score)
        weight = np.where(valid, weight, np.float32(0.0)).astype(np.float32)
        total = weight.sum(axis=1, keepdims=True)
        is_bad = ~np.isfinite(total[:, 0]) | ~np.isfinite(weight).all(axis=1)
        normalised = weight / total
    has_any = valid.any(axis=1)
    is_bad |= has_any & ~(total[:, 0] > 0)
    if is_bad.any():
        masked = np.where(valid, score, np.inf)
        best = masked.min(axis=1, keepdims=True)
        ties = (masked == best) & valid
        tie_weight = ties.astype(np.float32) / ties.sum(axis=1, keepdims=True).astype(np.float32)
        normalised[is_bad] = tie_weight[is_bad]
    normalised[~has_any] = 0.0
    return normalised.astype(np.float32, copy=False)


def _as_query(feats: np.ndarray, index: RetrievalIndex) -> np.ndarray:
    """Validate (T, C) features against the index and return a C-contiguous float32 copy or view."""
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"features must be (T, C), got shape {feats.shape}")
    check_dim(index, feats.shape[1])
    return np.ascontiguousarray(feats, dtype=np.float32)


def search_and_blend(
    feats: np.ndarray, index: RetrievalIndex | None, index_rate: float, *, k: int = DEFAULT_K
) -> np.ndarray:
    """Mix retrieved training features into the query: ``retrieved * index_rate + (1 - index_rate) * feats``.

    Skipped (a float32 copy of ``feats`` is returned) when ``index_rate == 0`` or ``index`` is None.

    Args:
        feats: (T, C) float32 content features at 50 fps (before the 2x upsampling).
        index: the loaded index, or None.
        index_rate: share of retrieved features, in [0, 1].
        k: neighbours per frame.

    Returns:
        (T, C) float32.
    """
    rate = float(index_rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"index_rate must be in [0, 1], got {index_rate}")
    if index is None or rate == 0:
        return np.array(feats, dtype=np.float32, copy=True)
    query = _as_query(feats, index)
    retrieved = retrieve(query, index, k=k).retrieved
    # Both factors are rounded to float32 first, as torch does with a Python scalar in RVC.
    return retrieved * np.float32(rate) + np.float32(1.0 - rate) * query


INDEX_STAGES = ("added", "trained")
"""RVC's index file kinds: the searchable ``added_`` index and the centroid-only ``trained_`` one."""


def index_file_name(n_ivf: int, name: str, version: str, *, stage: str = "added") -> str:
    """RVC's index file name, e.g. ``added_IVF30_Flat_nprobe_1_myvoice_v2.index``.

    Args:
        n_ivf: number of IVF lists.
        name: experiment / voice name.
        version: 'v1' (256-dim features) or 'v2' (768-dim).
        stage: 'added' (the searchable index inference loads) or 'trained' (centroids only).
    """
    if stage not in INDEX_STAGES:
        raise ValueError(f"stage must be one of {INDEX_STAGES}, not {stage!r}")
    return f"{stage}_IVF{n_ivf}_Flat_nprobe_1_{name}_{version}.index"


def index_ivf_count(index: Any) -> int:
    """Number of IVF lists of an IVF index (to name its file)."""
    import faiss

    return int(faiss.extract_index_ivf(index).nlist)
