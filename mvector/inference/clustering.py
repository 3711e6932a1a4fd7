"""Clustering of speaker embeddings for diarization: agglomerative with a threshold, spectral with an eigengap.

* :func:`agglomerative_clustering`: average-linkage clustering on cosine distance; clusters keep merging while
  their average cosine similarity is above ``threshold``, or until ``num_speakers`` remain.
* :func:`spectral_clustering`: a cosine affinity pruned to each row's nearest neighbours (how many is chosen
  by the normalised maximum eigengap, NME-SC: Park et al., 2019, "Auto-tuning spectral clustering for speaker
  diarization using normalized maximum eigengap") and symmetrised, its graph Laplacian, the number of speakers
  taken from the largest eigengap between ``min_speakers`` and ``max_speakers`` (or given), and k-means on the
  row-normalised eigenvectors of the smallest eigenvalues (Ng, Jordan and Weiss, 2001).
* :func:`count_by_eigengap`: the number of speakers from the eigengap of the NME-SC affinity, lowered until every
  cluster holds enough points (what the segmentation pipeline uses with the count open).
* :func:`count_by_silhouette`: the number of speakers as the spectral partition with the highest
  :func:`silhouette` (the segmentation pipeline's previous rule, kept for comparison).
* :func:`merge_linked_clusters`: joins clusters that share many *must-link* pairs (e.g. pieces of overlapping
  segmentation windows over the same stretch of audio): one voice split in two.
* :func:`split_distinct_clusters`: splits a cluster whose two halves (spectral bisection) are clearly different
  voices (centroids less alike than a similarity), both halves big enough: two voices merged in one.
* :func:`merge_similar_clusters`: joins clusters whose centroids are more similar than a threshold (this is what
  lets a one-speaker recording come out as one speaker after spectral clustering).
* :func:`absorb_small_clusters`: hands the points of tiny clusters (a few stray windows) to the nearest big one.
* :func:`cluster_embeddings`: picks the method, and for many points clusters an even subsample and assigns every
  point to its nearest centroid, so the memory stays bounded (``max_points``\\ :sup:`2` affinities) however long
  the recording is.

Labels are renumbered ``0, 1, ...`` in order of first appearance.

>>> rng = np.random.default_rng(0)
>>> centres = rng.standard_normal((3, 16))
>>> emb = np.repeat(centres, 20, axis=0) + 0.3 * rng.standard_normal((60, 16))
>>> labels = spectral_clustering(emb, min_speakers=1, max_speakers=6)
>>> len(set(labels)), labels[:3].tolist(), labels[20:23].tolist(), labels[40:43].tolist()
(3, [0, 0, 0], [1, 1, 1], [2, 2, 2])
>>> list(agglomerative_clustering(emb, threshold=0.5)) == list(labels)
True
"""

from __future__ import annotations

import math

import numpy as np

from mvector.errors import ConfigError

__all__ = [
    "METHODS",
    "normalize_rows",
    "relabel",
    "agglomerative_clustering",
    "silhouette",
    "count_by_eigengap",
    "count_by_silhouette",
    "spectral_clustering",
    "estimate_num_speakers",
    "choose_neighbours",
    "merge_similar_clusters",
    "merge_linked_clusters",
    "split_distinct_clusters",
    "absorb_small_clusters",
    "cluster_centroids",
    "cluster_embeddings",
    "kmeans",
]

#: Accepted values of ``method`` in :func:`cluster_embeddings`.
METHODS = ("auto", "spectral", "agglomerative")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64; zero rows stay zero).

    >>> normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber labels ``0, 1, ...`` in order of first appearance.

    >>> relabel(np.array([5, 5, 2, 7, 2])).tolist()
    [0, 0, 1, 2, 1]
    """
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def _check(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ConfigError(f"embeddings must be a non-empty [N, D] array, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ConfigError("embeddings contain NaN or infinite values")
    return emb


def _speaker_range(n: int, num_speakers: int | None, min_speakers: int, max_speakers: int | None) -> tuple[int, int]:
    """The (low, high) number of clusters allowed for ``n`` points."""
    if num_speakers is not None:
        if int(num_speakers) < 1:
            raise ConfigError(f"num_speakers must be >= 1, got {num_speakers!r}")
        k = min(int(num_speakers), n)
        return k, k
    low = int(min_speakers)
    high = int(max_speakers) if max_speakers is not None else n
    if low < 1 or high < low:
        raise ConfigError(f"need 1 <= min_speakers <= max_speakers, got {min_speakers!r} and {max_speakers!r}")
    return min(low, n), min(high, n)


def agglomerative_clustering(
    embeddings: np.ndarray,
    threshold: float | None = 0.5,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int | None = None,
) -> np.ndarray:
    """Average-linkage clustering on cosine similarity.

    Clusters merge while their average pairwise cosine similarity exceeds ``threshold``; with ``num_speakers``
    merging goes on until that many remain. A threshold that leaves fewer than ``min_speakers`` or more than
    ``max_speakers`` clusters is overridden by the nearest allowed count.

    >>> emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> agglomerative_clustering(emb, threshold=0.5).tolist(), agglomerative_clustering(emb, num_speakers=1).tolist()
    ([0, 0, 1, 1], [0, 0, 0, 0])
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    emb = normalize_rows(_check(embeddings))
    n = len(emb)
    low, high = _speaker_range(n, num_speakers, min_speakers, max_speakers)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    from scipy.spatial.distance import pdist

    # condensed cosine distances (N(N-1)/2 values, no N x N matrix); clipped against rounding
    tree = linkage(np.clip(pdist(emb, "cosine"), 0.0, 2.0), method="average")
    if num_speakers is None and threshold is not None:
        labels = fcluster(tree, t=1.0 - float(threshold), criterion="distance")
        count = len(np.unique(labels))
        if low <= count <= high:
            return relabel(labels)
        target = low if count < low else high
    elif num_speakers is None:
        raise ConfigError("agglomerative clustering needs a threshold or num_speakers")
    else:
        target = low
    return relabel(fcluster(tree, t=target, criterion="maxclust"))


def _pruned_affinity(sim: np.ndarray, neighbours: int) -> np.ndarray:
    """Binary affinity: 1 where an entry is among its row's ``neighbours`` largest, symmetrised ((A + A^T) / 2)."""
    n = len(sim)
    k = min(n, max(1, int(neighbours)))
    affinity = np.zeros_like(sim)
    keep = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    np.put_along_axis(affinity, keep, 1.0, axis=1)
    return (affinity + affinity.T) / 2.0


def _laplacian(affinity: np.ndarray) -> np.ndarray:
    """The symmetric normalised Laplacian ``I - D^-1/2 A D^-1/2`` (eigenvalues in [0, 2])."""
    scale = 1.0 / np.sqrt(np.maximum(affinity.sum(axis=1), 1e-12))
    return np.eye(len(affinity)) - scale[:, None] * affinity * scale[None, :]


def estimate_num_speakers(eigenvalues: np.ndarray, min_speakers: int = 1, max_speakers: int = 8) -> int:
    """The ``k`` in ``[min_speakers, max_speakers]`` with the largest gap ``lambda[k] - lambda[k-1]`` (ascending).

    >>> estimate_num_speakers(np.array([0.0, 0.01, 0.02, 0.9, 0.95]), 1, 4)
    3
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    high = min(int(max_speakers), len(lam) - 1)
    if high < 1:
        return 1
    low = min(max(1, int(min_speakers)), high)
    gaps = lam[low : high + 1] - lam[low - 1 : high]
    return low + int(np.argmax(gaps))


def _normalised_max_gap(sim: np.ndarray, neighbours: int, low: int, high: int) -> float:
    """The largest eigengap between ``low`` and ``high`` clusters, over the largest eigenvalue (NME)."""
    lam = np.linalg.eigvalsh(_laplacian(_pruned_affinity(sim, neighbours)))
    top = min(high, len(lam) - 1)
    if top < 1:
        return 0.0
    start = min(max(1, low), top)
    return float((lam[start : top + 1] - lam[start - 1 : top]).max() / max(lam[-1], 1e-12))


def choose_neighbours(
    sim: np.ndarray, low: int, high: int, max_ratio: float = 0.25, candidates: int = 10, max_points: int = 300
) -> float:
    """The fraction ``p`` of neighbours to keep per row, by normalised maximum eigengap (NME-SC).

    Each candidate ``p`` (up to ``max_ratio``) is scored ``p / g(p)``, ``g`` the largest eigengap of the
    normalised Laplacian of the ``p``-pruned binary affinity over its largest eigenvalue; the smallest ratio wins
    (Park et al., 2019, who use the unnormalised Laplacian; the normalised one keeps the eigenvalues of one
    speaker's windows together near 1, so a gap inside a speaker does not beat the gap between speakers). Above
    ``max_points`` rows the search runs on an even subsample.

    >>> sim = np.kron(np.eye(2), np.ones((10, 10))) * 0.9 + 0.05
    >>> 0 < choose_neighbours(sim, 1, 4) <= 0.25
    True
    """
    n = len(sim)
    if n > max_points:
        pick = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
        sim, n = sim[np.ix_(pick, pick)], len(pick)
    counts = np.unique(np.geomspace(2, max(2.0, max_ratio * n), candidates).round().astype(np.int64))
    best, best_ratio = float(counts[-1]) / n, math.inf
    for count in counts:
        gap = _normalised_max_gap(sim, int(count), low, high)
        ratio = (count / n) / max(gap, 1e-12)
        if ratio < best_ratio:
            best, best_ratio = float(count) / n, ratio
    return best


def spectral_clustering(
    embeddings: np.ndarray,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int | None = 8,
    neighbour_ratio: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Spectral clustering with the number of speakers from the eigengap (or given), NME-SC style.

    The cosine similarity matrix is pruned to a binary affinity keeping each row's ``neighbour_ratio * N``
    largest entries (``None``: chosen by :func:`choose_neighbours`) and symmetrised; the number of speakers is
    the largest eigengap of its normalised graph Laplacian between ``min_speakers`` and ``max_speakers``, and
    k-means runs on the row-normalised eigenvectors of the ``k`` smallest eigenvalues.

    >>> rng = np.random.default_rng(1)
    >>> emb = np.concatenate([rng.normal(m, 0.2, (15, 8)) for m in (-1.0, 1.0)]) * rng.choice([-1, 1], 8)
    >>> emb[:, 0] += np.repeat([3.0, -3.0], 15)
    >>> labels = spectral_clustering(emb, max_speakers=5)
    >>> labels[:15].tolist() == [0] * 15, labels[15:].tolist() == [1] * 15
    (True, True)
    """
    from scipy.linalg import eigh

    emb = normalize_rows(_check(embeddings))
    n = len(emb)
    low, high = _speaker_range(n, num_speakers, min_speakers, max_speakers)
    if n <= 2 or high == 1:
        if high == 1 or n == 1:
            return np.zeros(n, dtype=np.int64)
        return agglomerative_clustering(emb, threshold=None, num_speakers=low)
    sim = emb @ emb.T
    if neighbour_ratio is None:
        neighbour_ratio = choose_neighbours(sim, low, high)
    if not 0.0 < neighbour_ratio <= 1.0:
        raise ConfigError(f"neighbour_ratio must be in (0, 1], got {neighbour_ratio!r}")
    laplacian = _laplacian(_pruned_affinity(sim, max(2, int(round(neighbour_ratio * n)))))
    top = min(n - 1, high + 1)
    values, vectors = eigh(laplacian, subset_by_index=[0, top])
    k = low if low == high else estimate_num_speakers(values, low, high)
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    return relabel(kmeans(normalize_rows(vectors[:, :k]), k, seed=seed))


def silhouette(similarity: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of a partition under cosine distance ``1 - similarity`` (``[N, N]``): for each point,
    ``(b - a) / max(a, b)`` with ``a`` its mean distance to the rest of its cluster and ``b`` the mean distance to
    the nearest other cluster (0 for a point alone in its cluster; 0 for one cluster) (Rousseeuw, 1987).

    >>> emb = normalize_rows(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]))
    >>> round(silhouette(emb @ emb.T, np.array([0, 0, 1, 1])), 3), silhouette(emb @ emb.T, np.zeros(4, int))
    (0.993, 0.0)
    """
    labels = relabel(labels)
    k = int(labels.max()) + 1
    n = len(labels)
    if k < 2:
        return 0.0
    sim = np.asarray(similarity, dtype=np.float64)
    onehot = np.eye(k)[labels]
    sizes = onehot.sum(axis=0)
    mean_to = (sim @ onehot) / sizes[None, :]  # mean similarity of every point to every cluster (self included)
    own_size = sizes[labels]
    own = (mean_to[np.arange(n), labels] * own_size - np.diag(sim)) / np.maximum(own_size - 1, 1)
    mean_to[np.arange(n), labels] = -np.inf
    a, b = 1.0 - own, 1.0 - mean_to.max(axis=1)
    score = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
    score[own_size == 1] = 0.0
    return float(score.mean())


def _bounded(embeddings: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Unit-length ``embeddings`` and, above ``max_points`` rows, the rows of an evenly spaced subsample (else None)."""
    emb = normalize_rows(_check(embeddings))
    if int(max_points) < 2:
        raise ConfigError(f"max_points must be >= 2, got {max_points!r}")
    if len(emb) <= int(max_points):
        return emb, None
    return emb, np.unique(np.linspace(0, len(emb) - 1, int(max_points)).round().astype(np.int64))


def _assign_to_centroids(emb: np.ndarray, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Every row of ``emb`` to the nearest centroid of ``points`` clustered as ``labels``."""
    return relabel(np.argmax(emb @ cluster_centroids(points, labels).T, axis=1))


def _all_alike(emb: np.ndarray, labels: np.ndarray, same_speaker: float) -> bool:
    """Whether every two centroids of the partition ``labels`` are more similar than ``same_speaker``."""
    centroids = cluster_centroids(emb, labels)
    return float((centroids @ centroids.T).min()) > float(same_speaker)


def count_by_silhouette(
    embeddings: np.ndarray,
    min_speakers: int = 1,
    max_speakers: int = 8,
    min_cluster_size: int = 1,
    same_speaker: float = 1.0,
    seed: int = 0,
    max_points: int = 2000,
) -> np.ndarray:
    """Labels with the number of speakers estimated: spectral clustering (:func:`spectral_clustering`) at every
    count from ``max(2, min_speakers)`` to ``max_speakers``, keeping the partition of the highest
    :func:`silhouette` among those whose clusters all hold at least ``min_cluster_size`` points. One speaker
    (or ``min_speakers`` when more) when no partition qualifies, or when every two centroids of the best
    partition are more similar than ``same_speaker`` (a cosine similarity).

    The silhouette asks of every point whether it sits closer to its own cluster than to the next one, so it
    needs no similarity threshold on the embeddings, whose typical levels vary with the voices, the recording and
    the length of the pieces; only the one-speaker decision does. Above ``max_points`` points an evenly spaced
    subsample is clustered and every point goes to its nearest centroid (memory ``max_points``\\ :sup:`2`).

    >>> rng = np.random.default_rng(0)
    >>> centres = rng.standard_normal((4, 16))
    >>> emb = np.repeat(centres, 15, axis=0) + 0.4 * rng.standard_normal((60, 16))
    >>> labels = count_by_silhouette(emb, max_speakers=7, min_cluster_size=5)
    >>> int(labels.max()) + 1, len({tuple(labels[i : i + 15]) for i in range(0, 60, 15)})
    (4, 4)
    >>> int(count_by_silhouette(emb[:15], max_speakers=7, same_speaker=0.8).max()) + 1
    1
    """
    emb, pick = _bounded(embeddings, max_points)
    if pick is not None:
        labels = count_by_silhouette(emb[pick], min_speakers, max_speakers, min_cluster_size, same_speaker, seed)
        return _assign_to_centroids(emb, emb[pick], labels)
    n = len(emb)
    low, high = _speaker_range(n, None, min_speakers, max_speakers)
    sim = emb @ emb.T
    best, best_score = np.zeros(n, dtype=np.int64), -np.inf
    for k in range(max(2, low), high + 1):
        labels = spectral_clustering(emb, num_speakers=k, seed=seed)
        sizes = np.bincount(labels, minlength=k)
        if len(sizes) < k or sizes.min() < int(min_cluster_size):
            continue
        score = silhouette(sim, labels)
        if score > best_score:
            best, best_score = labels, score
    if best_score == -np.inf:  # no partition qualifies: one speaker, or the fewest allowed
        return np.zeros(n, dtype=np.int64) if low <= 1 else spectral_clustering(emb, num_speakers=low, seed=seed)
    # one speaker when even the least alike clusters of the best partition are alike (not a fixed two-way split:
    # splitting many voices in two averages several voices into each half, whose centroids then look alike)
    if _all_alike(emb, best, same_speaker):
        return np.zeros(n, dtype=np.int64) if low <= 1 else spectral_clustering(emb, num_speakers=low, seed=seed)
    return relabel(best)


def count_by_eigengap(
    embeddings: np.ndarray,
    min_speakers: int = 1,
    max_speakers: int = 8,
    min_cluster_size: int = 1,
    same_speaker: float = 1.0,
    seed: int = 0,
    max_points: int = 2000,
) -> np.ndarray:
    """Labels with the number of speakers estimated by the eigengap (NME-SC), kept only with big enough clusters.

    :func:`spectral_clustering` with the count open between ``max(2, min_speakers)`` and ``max_speakers``: the
    neighbour pruning ``p`` that minimises ``p / eigengap`` (Park et al., 2019) and the count at that largest
    eigengap. While a cluster of that partition holds fewer than ``min_cluster_size`` points (stray pieces of a
    mixed or noisy window cannot make a speaker) the count goes down by one and the points are partitioned again,
    down to ``max(2, min_speakers)``. One speaker (when ``min_speakers`` allows it) when every two centroids of the
    final partition are more similar than ``same_speaker`` (a cosine similarity). Above ``max_points`` points an
    evenly spaced subsample is clustered and every point goes to its nearest centroid (memory
    ``max_points``\\ :sup:`2`).

    The eigengap asks how clearly the pruned neighbour graph falls apart into groups, not how similar the points
    are, so no similarity threshold sets the count; only the one-speaker decision needs one.

    >>> rng = np.random.default_rng(1)
    >>> voices = np.repeat(rng.standard_normal((3, 24)), [20, 30, 25], axis=0)
    >>> emb = voices + 0.5 * rng.standard_normal(voices.shape)
    >>> labels = count_by_eigengap(emb, max_speakers=8, min_cluster_size=8)
    >>> int(labels.max()) + 1, [len(set(labels[a:b])) for a, b in ((0, 20), (20, 50), (50, 75))]
    (3, [1, 1, 1])
    >>> count_by_eigengap(emb[20:50], max_speakers=8, min_cluster_size=8, same_speaker=0.6).max()  # one voice
    np.int64(0)
    """
    emb, pick = _bounded(embeddings, max_points)
    if pick is not None:
        labels = count_by_eigengap(emb[pick], min_speakers, max_speakers, min_cluster_size, same_speaker, seed)
        return _assign_to_centroids(emb, emb[pick], labels)
    n = len(emb)
    low, high = _speaker_range(n, None, min_speakers, max_speakers)
    if high <= 1:
        return np.zeros(n, dtype=np.int64)
    floor = max(2, low)
    labels = relabel(spectral_clustering(emb, None, floor, high, seed=seed))
    k = int(labels.max()) + 1
    while k > floor and np.bincount(labels, minlength=k).min() < int(min_cluster_size):
        k -= 1
        labels = relabel(spectral_clustering(emb, num_speakers=k, seed=seed))
    if low <= 1 and labels.max() >= 1 and _all_alike(emb, labels, same_speaker):
        return np.zeros(n, dtype=np.int64)
    return labels


def one_voice(
    embeddings: np.ndarray,
    labels: np.ndarray,
    cannot_links: np.ndarray | None = None,
    same_speaker: float = 1.0,
    halves_alike: float = 1.0,
    distinct: float = 1.0,
    cannot_share: float | None = None,
    min_cannot: int = 1,
    seed: int = 0,
    max_points: int = 2000,
) -> bool:
    """Whether the points partitioned as ``labels`` (an estimate with two or more clusters) are one voice.

    One voice when every two centroids of ``labels`` are more alike than ``same_speaker``, or when the two halves
    of a spectral bisection of all points are more alike than ``halves_alike`` while no two centroids of
    ``labels`` are less alike than ``distinct`` (one voice over-split by the estimate: its halves stay alike;
    many voices split in two average out into alike halves too, but their partition then holds distinct
    clusters). With ``cannot_share`` given, never one voice when at least ``min_cannot`` ``cannot_links`` (pairs
    ``[L, 2]`` of point indices believed to be different people, e.g. two local speakers of one segmentation
    window) exist and at least ``cannot_share`` of them fall across the bisection: the two halves then are what
    the segmentation told apart. Cosine similarities; above ``max_points`` points the bisection runs on an even
    subsample.

    >>> rng = np.random.default_rng(3)
    >>> a, b = rng.standard_normal((2, 16))
    >>> b = 0.8 * a / np.linalg.norm(a) * np.linalg.norm(b) + 0.6 * b  # two look-alike voices
    >>> emb = np.concatenate([a + 0.2 * rng.standard_normal((30, 16)), b + 0.2 * rng.standard_normal((30, 16))])
    >>> labels = np.repeat([0, 1], 30)
    >>> one_voice(emb, labels, same_speaker=0.6)
    True
    >>> apart = np.stack([np.arange(0, 30), np.arange(30, 60)], axis=1)  # the segmentation heard two people
    >>> one_voice(emb, labels, apart, same_speaker=0.6, cannot_share=0.8, min_cannot=20)
    False
    """
    emb = normalize_rows(_check(embeddings))
    labels = relabel(labels)
    if len(labels) != len(emb):
        raise ConfigError(f"{len(labels)} labels for {len(emb)} embeddings")
    if labels.max() < 1:
        return True
    links = np.zeros((0, 2), np.int64) if cannot_links is None else np.asarray(cannot_links, np.int64).reshape(-1, 2)
    if len(links) and (links.min() < 0 or links.max() >= len(emb)):
        raise ConfigError(f"cannot_links refer to points outside 0..{len(emb) - 1}")
    centroids = cluster_centroids(emb, labels)
    least = float((centroids @ centroids.T).min())
    if least <= float(same_speaker) and (least <= float(distinct) or float(halves_alike) >= 1.0):
        return False  # neither test can say one voice: no bisection needed
    points, pick = _bounded(emb, max_points)
    fit = points if pick is None else points[pick]
    halves = spectral_clustering(fit, num_speakers=2, seed=seed)
    halves_centroids = cluster_centroids(fit, halves)
    if pick is not None:
        halves = np.argmax(emb @ halves_centroids.T, axis=1)
    if cannot_share is not None and len(links) >= max(1, int(min_cannot)):
        if float((halves[links[:, 0]] != halves[links[:, 1]]).mean()) >= float(cannot_share):
            return False
    if least > float(same_speaker):
        return True
    return float(halves_centroids[0] @ halves_centroids[1]) > float(halves_alike) and least > float(distinct)


def kmeans(points: np.ndarray, k: int, n_init: int = 10, seed: int = 0) -> np.ndarray:
    """k-means labels ``[N]``: the best (lowest inertia) of ``n_init`` k-means++ starts (scipy's ``kmeans2``).

    >>> kmeans(np.array([[0.0], [0.1], [5.0], [5.2]]), 2).tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    True
    """
    from scipy.cluster.vq import kmeans2

    points = np.asarray(points, dtype=np.float64)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(max(1, int(n_init))):
        centres, labels = kmeans2(points, int(k), minit="++", seed=rng)
        inertia = float(((points - centres[labels]) ** 2).sum())
        if inertia < best_inertia and len(np.unique(labels)) == int(k):
            best, best_inertia = labels, inertia
    if best is None:  # every start lost a cluster (fewer distinct points than k): keep the last one
        best = labels
    return np.asarray(best, dtype=np.int64)


def cluster_centroids(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit-length mean of the unit-length embeddings of each label ``0..max(labels)`` ([K, D]).

    >>> cluster_centroids(np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]), np.array([0, 1, 1])).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    emb = normalize_rows(_check(embeddings))
    labels = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((int(labels.max()) + 1, emb.shape[1]))
    np.add.at(sums, labels, emb)
    return normalize_rows(sums)


def merge_similar_clusters(
    embeddings: np.ndarray, labels: np.ndarray, threshold: float, min_speakers: int = 1
) -> np.ndarray:
    """Join, most similar first, clusters whose centroids' cosine similarity exceeds ``threshold``.

    Merging stops at ``min_speakers`` clusters.

    >>> emb = np.array([[1.0, 0.0], [0.95, 0.3], [0.0, 1.0]])
    >>> merge_similar_clusters(emb, np.array([0, 1, 2]), threshold=0.9).tolist()
    [0, 0, 1]
    """
    labels = relabel(labels)
    emb = normalize_rows(_check(embeddings))
    while labels.max() + 1 > max(1, int(min_speakers)):
        cent = cluster_centroids(emb, labels)
        sim = cent @ cent.T
        np.fill_diagonal(sim, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sim)), sim.shape)
        if sim[a, b] <= threshold:
            break
        labels = relabel(np.where(labels == max(a, b), min(a, b), labels))
    return labels


def merge_linked_clusters(
    labels: np.ndarray, links: np.ndarray, ratio: float, min_speakers: int = 2
) -> np.ndarray:
    """Join, most linked first, two clusters joined by more than ``ratio`` times the must-link pairs that the
    less linked of the two holds inside itself.

    ``links`` ``[L, 2]`` are pairs of point indices known to be the same speaker (in the segmentation pipeline:
    pieces of different windows over the same stretch of audio, 97-100 % pure). A correct partition keeps them
    inside clusters; a voice that the clustering split in two leaves many across the split. Merging stops at
    ``min_speakers`` clusters.

    >>> labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    >>> links = np.array([[0, 1], [1, 2], [3, 4], [4, 5], [0, 3], [6, 7], [7, 8]])
    >>> merge_linked_clusters(labels, links, ratio=0.3).tolist()
    [0, 0, 0, 0, 0, 0, 1, 1, 1]
    >>> merge_linked_clusters(labels, links, ratio=0.6).tolist()
    [0, 0, 0, 1, 1, 1, 2, 2, 2]
    """
    labels = relabel(labels)
    links = np.asarray(links, dtype=np.int64).reshape(-1, 2)
    if len(links) and (links.min() < 0 or links.max() >= len(labels)):
        raise ConfigError(f"links refer to points outside 0..{len(labels) - 1}")
    while labels.max() + 1 > max(1, int(min_speakers)):
        k = int(labels.max()) + 1
        counts = np.zeros((k, k))
        np.add.at(counts, (labels[links[:, 0]], labels[links[:, 1]]), 1.0)
        counts = counts + counts.T  # each pair counted once in each direction; the diagonal twice
        inside = np.diag(counts) / 2.0
        across = np.triu(counts, 1)
        score = across / np.maximum(1.0, np.minimum(inside[:, None], inside[None, :]))
        a, b = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[a, b] <= float(ratio):
            break
        labels = relabel(np.where(labels == max(a, b), min(a, b), labels))
    return labels


def split_distinct_clusters(
    embeddings: np.ndarray,
    labels: np.ndarray,
    below: float,
    min_size: int,
    max_speakers: int = 8,
    seed: int = 0,
    max_points: int = 2000,
) -> np.ndarray:
    """Split clusters in two while the halves of a spectral bisection are less alike than ``below`` (cosine of
    their centroids) and both hold at least ``min_size`` points, up to ``max_speakers`` clusters.

    Two halves of one voice stay alike (their centroids 0.69-0.91 alike for the pieces of the single voices of
    the tuning sets), so only clusters that plainly hold two voices split. Above ``max_points`` members the
    bisection runs on an even subsample and every member goes to the nearer half.

    >>> rng = np.random.default_rng(2)
    >>> voices = np.repeat(rng.standard_normal((3, 16)), 20, axis=0)
    >>> emb = voices + 0.3 * rng.standard_normal(voices.shape)
    >>> labels = split_distinct_clusters(emb, np.repeat([0, 1, 1], 20), below=0.5, min_size=8)
    >>> labels.tolist() == np.repeat([0, 1, 2], 20).tolist()
    True
    >>> split_distinct_clusters(emb[:20], np.zeros(20, int), below=0.5, min_size=8).max()  # one voice
    np.int64(0)
    """
    emb = normalize_rows(_check(embeddings))
    labels = relabel(labels)
    if len(labels) != len(emb):
        raise ConfigError(f"{len(labels)} labels for {len(emb)} embeddings")
    tried: set[tuple[int, int]] = set()  # (size, first member) of clusters already found one voice
    while int(labels.max()) + 1 < int(max_speakers):
        for c in range(int(labels.max()) + 1):
            members = np.flatnonzero(labels == c)
            key = (len(members), int(members[0]))
            if len(members) < 2 * int(min_size) or key in tried:
                continue
            points, pick = _bounded(emb[members], max_points)
            fit = points if pick is None else points[pick]
            halves = spectral_clustering(fit, num_speakers=2, seed=seed)
            centroids = cluster_centroids(fit, halves)
            if pick is not None:
                halves = np.argmax(points @ centroids.T, axis=1)
            sizes = np.bincount(halves, minlength=2)
            if sizes.min() >= int(min_size) and float(centroids[0] @ centroids[1]) < float(below):
                labels = labels.copy()
                labels[members[halves == 1]] = int(labels.max()) + 1
                break
            tried.add(key)
        else:
            break
    return relabel(labels)


def absorb_small_clusters(
    embeddings: np.ndarray, labels: np.ndarray, min_size: int, min_speakers: int = 1
) -> np.ndarray:
    """Move the points of clusters with fewer than ``min_size`` members to the nearest larger cluster's centroid.

    Nothing moves when it would leave fewer than ``min_speakers`` clusters (or no cluster is large enough).

    >>> emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.95, 0.0], [0.0, 1.0], [0.1, 1.0], [0.7, 0.6]])
    >>> absorb_small_clusters(emb, np.array([0, 0, 0, 1, 1, 2]), min_size=2).tolist()
    [0, 0, 0, 1, 1, 0]
    """
    labels = relabel(labels)
    sizes = np.bincount(labels)
    big = np.flatnonzero(sizes >= int(min_size))
    if len(big) == len(sizes) or len(big) < max(1, int(min_speakers)):
        return labels
    emb = normalize_rows(_check(embeddings))
    centroids = cluster_centroids(emb, labels)[big]
    small = ~np.isin(labels, big)
    labels = labels.copy()
    labels[small] = big[np.argmax(emb[small] @ centroids.T, axis=1)]
    return relabel(labels)


def cluster_embeddings(
    embeddings: np.ndarray,
    method: str = "auto",
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int | None = 8,
    threshold: float | None = None,
    merge_threshold: float | None = None,
    min_cluster_size: int = 1,
    max_points: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Cluster window embeddings into speakers; labels ``[N]`` numbered in order of first appearance.

    ``method``: ``"spectral"``, ``"agglomerative"`` (needs ``threshold`` unless ``num_speakers`` is given) or
    ``"auto"``: spectral when the number of speakers is fixed (``num_speakers``, or ``min_speakers ==
    max_speakers``) and there are at least 8 points, agglomerative with ``threshold`` otherwise (on short
    recordings of generated conversations and a real one, this measured better than the eigengap estimate; see
    benchmarks/RESULTS.md). ``merge_threshold`` (spectral with an open count) joins clusters whose
    centroids are more similar than it. Clusters under ``min_cluster_size`` points then go to the nearest larger
    cluster. Above ``max_points`` points, an evenly spaced subsample is clustered and every point goes to its
    nearest centroid.

    >>> rng = np.random.default_rng(0)
    >>> emb = np.repeat(np.eye(4)[:2], 50, axis=0) + 0.1 * rng.standard_normal((100, 4))
    >>> labels = cluster_embeddings(emb, threshold=0.5, max_points=30)
    >>> int(labels.max()) + 1, labels[:50].tolist() == [0] * 50
    (2, True)
    """
    if method not in METHODS:
        raise ConfigError(f"unknown clustering method {method!r}; valid: {', '.join(METHODS)}")
    if int(max_points) < 2:
        raise ConfigError(f"max_points must be >= 2, got {max_points!r}")
    emb = normalize_rows(_check(embeddings))
    n = len(emb)
    low, high = _speaker_range(n, num_speakers, min_speakers, max_speakers)
    subset = np.unique(np.linspace(0, n - 1, int(max_points)).round().astype(np.int64)) if n > max_points else None
    points = emb if subset is None else emb[subset]
    if method == "auto":
        method = "spectral" if low == high and len(points) >= 8 else "agglomerative"
    if method == "agglomerative":
        if threshold is None and low != high:
            raise ConfigError("agglomerative clustering needs a threshold (or num_speakers)")
        labels = agglomerative_clustering(points, threshold, low if low == high else None, low, high)
    else:
        labels = spectral_clustering(points, low if low == high else None, low, high, seed=seed)
        if merge_threshold is not None and low != high:
            labels = merge_similar_clusters(points, labels, float(merge_threshold), low)
    if int(min_cluster_size) > 1:
        labels = absorb_small_clusters(points, labels, int(min_cluster_size), low)
    if subset is not None:
        labels = np.argmax(emb @ cluster_centroids(points, labels).T, axis=1)
    return relabel(labels)
