"""The retrieval index: RVC's faiss recipe (``IVF{n},Flat``, nprobe 1) over content features.

Recipe (classic WebUI ``train_index``): shuffle the rows; above 200 000 rows replace them by
10 000 MiniBatchKMeans centres; ``n_ivf = min(int(16 * sqrt(N)), N // 39)`` (at least 1 here,
as in the 2026 code); ``index_factory(C, "IVF{n_ivf},Flat")`` with L2; nprobe 1; train; add
in batches of 8192. Unlike RVC the shuffle is seeded, so a build is reproducible.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from infer.errors import TimbreError
from infer.progress import ProgressFn, StopFn, check_stop, report

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

KMEANS_ABOVE_ROWS = 200_000
KMEANS_CENTRES = 10_000
KMEANS_BATCH_PER_CPU = 256
ADD_BATCH_ROWS = 8192


class IndexBuildError(TimbreError):
    """The features cannot be indexed (empty, wrong shape, NaN...)."""


def ivf_list_count(n_vectors: int) -> int:
    """Number of IVF lists for ``n_vectors`` rows: ``min(int(16*sqrt(N)), N//39)``, at least 1.

    ``N`` is the row count actually indexed, i.e. 10 000 after the k-means reduction.
    """
    if n_vectors <= 0:
        raise ValueError(f"n_vectors must be positive, got {n_vectors}")
    return max(1, min(int(16 * math.sqrt(n_vectors)), n_vectors // 39))


def _check_features(features: np.ndarray) -> np.ndarray:
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise IndexBuildError(
            f"features must be a non-empty (N, C) matrix, got shape {features.shape}; "
            "extract features before building the index"
        )
    x = np.ascontiguousarray(features, dtype=np.float32)
    if not np.isfinite(x).all():
        raise IndexBuildError("features contain NaN or Inf; re-run feature extraction")
    return x


def reduce_rows(features: np.ndarray, *, seed: int = 0, n_cpu: int | None = None) -> np.ndarray:
    """RVC's reduction for big sets: MiniBatchKMeans centres when there are over 200 000 rows.

    Args:
        features: (N, C) float32.
        seed: k-means random state.
        n_cpu: CPUs to size the batch (256 per CPU, as RVC); default ``os.cpu_count()``.

    Returns:
        ``features`` itself for N <= 200 000, else (10 000, C) float32 centres.
    """
    if features.shape[0] <= KMEANS_ABOVE_ROWS:
        return features
    from sklearn.cluster import MiniBatchKMeans

    n_cpu = n_cpu or os.cpu_count() or 1
    log.info("reducing %d feature rows to %d k-means centres", features.shape[0], KMEANS_CENTRES)
    kmeans = MiniBatchKMeans(
        n_clusters=KMEANS_CENTRES,
        batch_size=KMEANS_BATCH_PER_CPU * n_cpu,
        compute_labels=False,
        init="random",
        random_state=seed,
    )
    return np.ascontiguousarray(kmeans.fit(features).cluster_centers_, dtype=np.float32)


def build_index(
    features: np.ndarray,
    *,
    seed: int = 0,
    n_cpu: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> faiss.Index:
    """Build RVC's retrieval index from content features.

    Args:
        features: (N, C) float32 content features (C = 256 for v1, 768 for v2), all frames of
            the training set.
        seed: seeds the row shuffle and the k-means reduction.
        n_cpu: CPUs for the k-means batch size (see :func:`reduce_rows`).
        progress: receives (fraction, message).
        should_stop: checked between stages and add batches; raises Cancelled.

    Returns:
        A trained, filled ``IndexIVFFlat`` (L2) with nprobe 1; ids are the row order after
        shuffling (and reduction).
    """
    import faiss

    x = _check_features(features)
    report(progress, 0.0, "shuffling features")
    x = x[np.random.default_rng(seed).permutation(x.shape[0])]
    check_stop(should_stop)
    if x.shape[0] > KMEANS_ABOVE_ROWS:
        report(progress, 0.05, f"k-means: {x.shape[0]} rows to {KMEANS_CENTRES} centres")
        x = reduce_rows(x, seed=seed, n_cpu=n_cpu)
        check_stop(should_stop)
    n_rows, dim = x.shape
    n_ivf = ivf_list_count(n_rows)
    index = faiss.index_factory(dim, f"IVF{n_ivf},Flat")
    faiss.extract_index_ivf(index).nprobe = 1
    report(progress, 0.4, f"training IVF{n_ivf} on {n_rows} rows")
    index.train(x)
    check_stop(should_stop)
    for start in range(0, n_rows, ADD_BATCH_ROWS):
        index.add(x[start : start + ADD_BATCH_ROWS])
        report(progress, 0.5 + 0.5 * min(n_rows, start + ADD_BATCH_ROWS) / n_rows, "adding features")
        check_stop(should_stop)
    log.info("built IVF%d index: %d rows of dimension %d", n_ivf, n_rows, dim)
    return index


def write_index(index: faiss.Index, path: str | os.PathLike[str]) -> Path:
    """Write ``index`` to ``path`` atomically (temp file beside it, fsync, ``os.replace``)."""
    import faiss

    from infer.fsutil import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return path
