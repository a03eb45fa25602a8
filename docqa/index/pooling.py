"""Token pooling at ingest: merge a page's similar vectors so fewer are stored and scored.

Hierarchical pooling as the ColPali authors describe it: cluster the page's vectors (Ward linkage;
on unit vectors Euclidean distance orders pairs as cosine similarity does) into about n / factor
groups and keep each group's mean. Factor 2 costs almost nothing in retrieval quality; factor 3 kept
97.8% of nDCG in their measurements.
"""

from __future__ import annotations

import numpy as np


def pool_tokens(vectors: np.ndarray, factor: int) -> np.ndarray:
    """About len(vectors) / factor mean vectors of clusters of similar vectors (float32)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    groups = max(1, len(vectors) // factor)
    if factor <= 1 or groups >= len(vectors):
        return vectors
    from scipy.cluster.hierarchy import fcluster, linkage

    labels = fcluster(linkage(vectors.astype(np.float64), method="ward"), t=groups, criterion="maxclust") - 1
    sums = np.zeros((labels.max() + 1, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, vectors)
    return (sums / np.bincount(labels)[:, None]).astype(np.float32)
