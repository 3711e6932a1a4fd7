"""Compare rules that estimate the number of speakers, on the segmentation pipeline's cached local speakers.

``bench_diarization.py --cache_dir CACHE --work_dir WORK`` keeps every recording's local speakers and piece
embeddings (``LocalSpeakers.save``); this script finishes the pipeline on them with each rule below (seconds
per rule instead of a pass over the audio) and prints, per rule, the DER with the count open, the same
pipeline's DER with the count given, their ratio, and how often the count is exact. Use it on a *tuning* set
(e.g. ``--voices train --seed 0``), then measure the chosen rule once with ``bench_diarization.py`` on a held-out
set (``--voices dev --seed 100000``).

Rules: ``threshold`` (an older default: average-linkage clustering stopped at 0.55 sets the count, spectral
clustering at it draws the partition); ``calibrated AHC T`` (average linkage stopped at T, the LLR = 0 point of a
logistic calibration of piece-pair cosine scores fitted on the tuning sets, which gave 0.45; the clusters of at
least 8 pieces are counted and spectral clustering at that count draws the partition); ``centroid T``
(centroid-linkage clustering stopped at T, clusters under 3 % of the clean speech handed to the nearest other,
optionally re-estimated by ``vmf_reestimate`` or redrawn by spectral clustering at that count); ``silhouette M``
(the previous rule: :func:`count_by_silhouette` with clusters of at least M pieces, one speaker above 0.75);
``eigengap`` (the NME-SC eigengap count alone); ``eigengap, clusters >= M`` (:func:`count_by_eigengap`; M = 8 is
the pipeline's own rule); ``tracks`` (pieces of overlapping windows that cover the same stretch of audio, and the
consecutive pieces of one local speaker's run, joined into one node with their mean embedding before the
eigengap rule); ``second round`` (the eigengap count, one speaker above 0.65, then same-audio links merge and
distinct halves split) and ``chosen`` (the pipeline's own: the second round with the one-voice decision of
:func:`~mvector.inference.clustering.one_voice`, halves alike and the segmentation's cannot-links).

Besides DER and counts, every rule is asked to count the pieces of each single voice of every recording (the
reference says whose a piece is, and the cannot-links among that voice's pieces go with them): how often it then
finds one speaker (``single voices as one``), the case that
:data:`~mvector.inference.segmentation_diarization.ONE_SPEAKER_SIMILARITY` is set for. Whole one-voice recordings
(``bench_diarization.py --speakers 1``) are scored like any other set.

    python benchmarks/tune_diarization_count.py --cache_dir CACHE --work_dir WORK [WORK ...] --model_path CAMPP

Caches made before the pipeline shared embeddings between windows (every piece embedded) can be finished as the
pipeline now would with ``--share_same_audio 0.9`` (:func:`share_same_audio`).

>>> lab = centroid_linkage(np.array([[1.0, 0.0], [0.9, 0.2], [0.0, 1.0], [0.2, 0.9]]), threshold=0.9)
>>> lab.tolist()
[0, 0, 1, 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from common import add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.data.rttm import read_rttm  # noqa: E402
from mvector.evaluation.der import diarization_error  # noqa: E402
from mvector.inference.clustering import (  # noqa: E402
    agglomerative_clustering,
    cluster_centroids,
    count_by_eigengap,
    count_by_silhouette,
    merge_linked_clusters,
    normalize_rows,
    relabel,
    spectral_clustering,
    split_distinct_clusters,
)
from mvector.inference.segmentation_diarization import (  # noqa: E402
    ONE_SPEAKER_SIMILARITY,
    LocalSpeakers,
    SameAudioPieces,
    SegmentationDiarizer,
    cannot_links,
)


def centroid_linkage(
    embeddings: np.ndarray,
    threshold: float | None = 0.7,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int | None = None,
) -> np.ndarray:
    """Centroid-linkage clustering on cosine similarity: the two clusters whose centroids (unit-length means of
    their unit-length members) are the most similar merge, while that similarity exceeds ``threshold`` (or until
    ``num_speakers`` remain), kept within ``min_speakers``..``max_speakers``.

    Unlike average linkage, a large cluster is compared through its centroid, where the noise of its members
    averages out: one speaker's pieces agree with their own centroid far better than with each other, while two
    speakers' centroids stay apart, so the stopping threshold separates "same" from "different" more cleanly.
    Memory is ``N x N`` similarities (callers subsample long recordings, see :func:`cluster_embeddings`).

    >>> emb = np.array([[1.0, 0.0], [0.9, 0.2], [0.0, 1.0], [0.2, 0.9], [0.7, 0.7]])
    >>> centroid_linkage(emb, threshold=0.95).tolist()
    [0, 0, 1, 1, 2]
    >>> centroid_linkage(emb, threshold=0.4).tolist()
    [0, 0, 0, 0, 0]
    >>> centroid_linkage(emb, num_speakers=2).tolist()
    [0, 0, 1, 1, 0]
    """
    emb = normalize_rows(np.asarray(embeddings, dtype=np.float64))
    n = len(emb)
    low = int(num_speakers or min_speakers)
    high = int(num_speakers or max_speakers or n)
    if num_speakers is None and threshold is None:
        raise ValueError("centroid clustering needs a threshold or num_speakers")
    labels = np.arange(n)
    sums = emb.copy()
    alive = np.ones(n, dtype=bool)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    partner = np.argmax(sim, axis=1)  # each row's most similar cluster, and that similarity
    best = sim[np.arange(n), partner]
    count = n
    while count > low:
        a = int(np.argmax(best))
        b = int(partner[a])
        if num_speakers is None and count <= high and best[a] <= float(threshold):
            break
        a, b = min(a, b), max(a, b)
        sums[a] += sums[b]
        labels[labels == b] = a
        alive[b] = False
        row = normalize_rows(sums) @ normalize_rows(sums[a : a + 1])[0]
        row[~alive] = -np.inf
        row[a] = -np.inf
        sim[a, :] = row
        sim[:, a] = row
        sim[b, :] = -np.inf
        sim[:, b] = -np.inf
        best[b] = -np.inf
        stale = alive & np.isin(partner, [a, b])
        stale[a] = True
        partner[stale] = np.argmax(sim[stale], axis=1)
        best[stale] = sim[stale, partner[stale]]
        better = alive & ~stale & (row > best)
        partner[better] = a
        best[better] = row[better]
        count -= 1
    return relabel(labels)


def vmf_reestimate(
    embeddings: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    concentration: float = 10.0,
    min_share: float = 0.0,
    iterations: int = 10,
    min_speakers: int = 1,
) -> np.ndarray:
    """Re-estimate speakers from a first clustering: a mixture of von Mises-Fisher distributions on the unit
    sphere (one shared ``concentration``), fitted by EM from ``labels``, whose speakers holding less than
    ``min_share`` of the total ``weights`` (e.g. seconds of speech; default one per point) are dropped.

    Each iteration gives every point posteriors ``p(k | x) ~ share_k * exp(concentration * cos(x, mean_k))``,
    then each speaker's mean direction and share of speech from them; the speaker with the smallest share under
    ``min_share`` is removed (its points go where the posteriors send them) until none is, keeping at least
    ``min_speakers``. This is a PLDA-free cousin of VBx's re-estimation (Landini et al., 2022), without the
    hidden Markov model over time: stray clusters of a few mixed pieces dissolve into the speakers they resemble,
    and points first put with the wrong speaker move. Returns hard labels renumbered ``0, 1, ...``.

    >>> rng = np.random.default_rng(0)
    >>> centres = rng.standard_normal((2, 8))
    >>> emb = np.repeat(centres, 30, axis=0) + 0.3 * rng.standard_normal((60, 8))
    >>> first = np.repeat([0, 1], 30); first[[3, 40]] = 2; first[10] = 1   # a stray cluster and a wrong point
    >>> vmf_reestimate(emb, first, min_share=0.1).tolist() == [0] * 30 + [1] * 30
    True
    """
    emb = normalize_rows(np.asarray(embeddings, dtype=np.float64))
    labels = relabel(labels)
    if len(labels) != len(emb):
        raise ValueError(f"{len(labels)} labels for {len(emb)} embeddings")
    w = np.ones(len(emb)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(emb),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be one finite, non-negative number per embedding, not all zero")
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration!r}")
    post = np.eye(int(labels.max()) + 1)[labels]
    steps = 0
    while True:  # EM steps, and after each one the removal of every too small speaker, smallest first
        mass = (post * w[:, None]).sum(axis=0)
        share = mass / mass.sum()
        smallest = int(np.argmin(share))
        if share[smallest] < float(min_share) and len(share) > max(1, int(min_speakers)):
            post = np.delete(post, smallest, axis=1)  # the points' other posteriors decide where they go
            post[post.sum(axis=1) <= 0] = 1.0
            post /= post.sum(axis=1, keepdims=True)
            continue
        if steps >= max(1, int(iterations)):
            break
        steps += 1
        means = normalize_rows((post * w[:, None]).T @ emb)
        logits = float(concentration) * (emb @ means.T) + np.log(np.maximum(share, 1e-12))
        logits -= logits.max(axis=1, keepdims=True)
        post = np.exp(logits)
        post /= post.sum(axis=1, keepdims=True)
    return relabel(np.argmax(post, axis=1))


def absorb_by_share(embeddings: np.ndarray, labels: np.ndarray, seconds: np.ndarray, share: float) -> np.ndarray:
    """Hand the clusters holding under ``share`` of the total ``seconds``, smallest first, to their nearest other
    cluster (point by point, by centroid similarity).

    >>> absorb_by_share(np.array([[1.0, 0], [1, 0.1], [0, 1.0]]), np.array([0, 0, 1]), np.ones(3), 0.4).tolist()
    [0, 0, 0]
    """
    labels = relabel(labels)
    while labels.max() >= 1:
        mass = np.bincount(labels, weights=seconds)
        k = int(np.argmin(mass))
        if mass[k] >= share * mass.sum():
            break
        sims = normalize_rows(embeddings[labels == k]) @ cluster_centroids(embeddings, labels).T
        sims[:, k] = -np.inf
        labels = labels.copy()
        labels[labels == k] = np.argmax(sims, axis=1)
        labels = relabel(labels)
    return labels


def piece_tracks(owners: list[tuple[int, int, int, int, bool]], offsets: list[int], runs: bool = True) -> np.ndarray:
    """Track of every piece ``(chunk, local speaker, first frame, end frame, clean)``: pieces of different windows
    whose global frame spans overlap by more than half of their union (the same stretch of audio), and with
    ``runs`` the consecutive pieces of one local speaker's run in a window, share a track.

    >>> piece_tracks([(0, 0, 0, 10, True), (1, 1, 0, 8, True), (0, 2, 40, 50, True)], [0, 2]).tolist()
    [0, 0, 1]
    """
    start = np.array([offsets[o[0]] + o[2] for o in owners])
    end = np.array([offsets[o[0]] + o[3] for o in owners])
    parent = np.arange(len(owners))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    order = np.argsort(start, kind="stable")
    for pos, i in enumerate(order):
        for j in order[pos + 1 :]:
            if start[j] > end[i]:
                break
            if owners[i][0] == owners[j][0]:
                touching = owners[i][3] == owners[j][2] or owners[j][3] == owners[i][2]
                if runs and owners[i][1] == owners[j][1] and touching:
                    parent[root(i)] = root(j)
                continue
            union = max(end[i], end[j]) - min(start[i], start[j])
            if (min(end[i], end[j]) - max(start[i], start[j])) / union > 0.5:
                parent[root(i)] = root(j)
    return relabel(np.array([root(i) for i in range(len(owners))]))


def rules() -> dict[str, tuple[dict, Callable | None]]:
    """Name -> (configuration overrides, replacement of ``cluster_pieces`` or None for the pipeline's own)."""
    out: dict[str, tuple[dict, Callable | None]] = {"threshold 0.55 (older)": ({"threshold": 0.55}, None)}

    def calibrated(t: float) -> Callable:
        def cluster(self: Any, x: np.ndarray, seconds: np.ndarray, links: Any = None,
                    cannot: Any = None) -> np.ndarray:
            count = int((np.bincount(agglomerative_clustering(x, t)) >= self.config.min_cluster_pieces).sum())
            count = max(1, min(count, self.config.max_speakers))
            return relabel(spectral_clustering(x, count)) if count > 1 else np.zeros(len(x), np.int64)
        return cluster

    def centroid(t: float, then: str) -> Callable:
        def cluster(self: Any, x: np.ndarray, seconds: np.ndarray, links: Any = None,
                    cannot: Any = None) -> np.ndarray:
            labels = centroid_linkage(x, t, None, self.config.min_speakers, None)
            labels = absorb_by_share(x, labels, seconds, 0.03)
            if then == "vmf" and labels.max() >= 1:
                labels = vmf_reestimate(x, labels, seconds, 20.0, 0.03)
            if then == "spectral" and labels.max() >= 1 and len(x) >= 8:
                labels = relabel(self.cluster_with(x, num_speakers=int(labels.max()) + 1, min_cluster_windows=1))
            if labels.max() + 1 > self.config.max_speakers:
                labels = centroid_linkage(x, None, self.config.max_speakers)
            return relabel(labels)
        return cluster

    def silhouette(m: int) -> Callable:
        def cluster(self: Any, x: np.ndarray, seconds: np.ndarray, links: Any = None,
                    cannot: Any = None) -> np.ndarray:
            return count_by_silhouette(x, 1, self.config.max_speakers, m, 0.75)
        return cluster

    def eigengap_alone(self: Any, x: np.ndarray, seconds: np.ndarray, links: Any = None,
                       cannot: Any = None) -> np.ndarray:
        return relabel(spectral_clustering(x, None, 2, self.config.max_speakers))

    def tracks(runs: bool) -> Callable:
        def cluster(self: Any, x: np.ndarray, seconds: np.ndarray, links: Any = None,
                    cannot: Any = None) -> np.ndarray:
            owners = getattr(self, "clean_owners", None)
            if owners is None or len(owners) != len(x):  # single-voice trials: no timeline
                return SegmentationDiarizer.cluster_pieces(self, x, seconds, links, cannot)
            track = piece_tracks(owners, self.local_offsets, runs)
            if track.max() < 2:
                return np.zeros(len(x), np.int64)
            base = SegmentationDiarizer.cluster_pieces
            return relabel(base(self, cluster_centroids(x, track), np.bincount(track, weights=seconds))[track])
        return cluster

    def eigengap_then(merge: float | None, split: float | None) -> Callable:
        def cluster(self: Any, x: np.ndarray, seconds: np.ndarray, links: Any = None,
                    cannot: Any = None) -> np.ndarray:
            c = self.config
            labels = count_by_eigengap(x, c.min_speakers, c.max_speakers, c.min_cluster_pieces,
                                       ONE_SPEAKER_SIMILARITY, c.seed, c.max_cluster_windows)
            if labels.max() >= 1 and merge is not None and links is not None and len(links):
                labels = merge_linked_clusters(labels, links, merge, 2)
            if labels.max() >= 1 and split is not None:
                labels = split_distinct_clusters(x, labels, split, c.min_cluster_pieces, c.max_speakers)
            return labels
        return cluster

    def centred(dims: int | None) -> Callable:
        def cluster(self: Any, x: np.ndarray, seconds: np.ndarray, links: Any = None,
                    cannot: Any = None) -> np.ndarray:
            c = self.config
            y = normalize_rows(x)
            y = y - y.mean(axis=0)
            if dims:
                u, s, _ = np.linalg.svd(y, full_matrices=False)
                y = u[:, :dims] * s[:dims]
            labels = count_by_eigengap(y, c.min_speakers, c.max_speakers, c.min_cluster_pieces, 1.0, c.seed,
                                       c.max_cluster_windows)
            centroids = cluster_centroids(x, labels)  # the one-speaker test on the embeddings as they are
            if labels.max() >= 1 and float((centroids @ centroids.T).min()) > ONE_SPEAKER_SIMILARITY:
                return np.zeros(len(x), np.int64)
            return labels
        return cluster

    out["calibrated AHC 0.45, clusters >= 8 counted, spectral"] = ({}, calibrated(0.45))
    for t in (0.6, 0.7, 0.8):
        for then in ("", "vmf", "spectral"):
            out[f"centroid {t}, 3 % share{', ' + then if then else ''}"] = ({}, centroid(t, then))
    for m in (5, 8):
        out[f"silhouette, clusters >= {m} (previous: 8)"] = ({}, silhouette(m))
    out["eigengap (NME-SC) alone"] = ({}, eigengap_alone)
    for m in (5, 10):
        out[f"eigengap, clusters >= {m}"] = ({"min_cluster_pieces": m}, None)
    out["eigengap, clusters >= 8, one speaker above 0.65 (previous)"] = ({}, eigengap_then(None, None))
    for ratio in (0.2, 0.3, 0.4):
        out[f"previous + same-audio links merge > {ratio}"] = ({}, eigengap_then(ratio, None))
    for below in (0.5, 0.6, 0.65):
        out[f"previous + split halves < {below}"] = ({}, eigengap_then(None, below))
    out["previous, embeddings centred per recording"] = ({}, centred(None))
    out["previous, embeddings centred per recording, PCA to 32 dimensions"] = ({}, centred(32))
    out["previous + links merge > 0.3 + split halves < 0.6 (second round)"] = ({}, eigengap_then(0.3, 0.6))
    out["second round + one voice by the halves, not against the cannot-links (chosen)"] = ({}, None)
    out["tracks (same audio) then eigengap, clusters >= 8 tracks"] = ({}, tracks(False))
    out["tracks (same audio + runs) then eigengap, clusters >= 8 tracks"] = ({}, tracks(True))
    return out


def share_same_audio(local: LocalSpeakers, share: float) -> LocalSpeakers:
    """``local`` with the embeddings the pipeline would have shared (:data:`SAME_AUDIO_SHARE`), for caches made
    with every piece embedded: in window order, a piece takes the embedding of the most shared piece of an earlier
    window (:class:`~mvector.inference.segmentation_diarization.SameAudioPieces`) instead of its own.

    >>> acts = [np.ones((10, 3), np.uint8)] * 2
    >>> local = LocalSpeakers(1.0, [0, 2], acts, [10, 10], [(0, 0, 2, 10, True), (1, 0, 0, 8, True)],
    ...                       np.eye(2, dtype=np.float32))
    >>> share_same_audio(local, 0.9).embeddings.tolist()
    [[1.0, 0.0], [1.0, 0.0]]
    """
    rows = np.arange(len(local.owners))
    sharing = SameAudioPieces(share)
    chunk = -1
    for row, (index, _speaker, a, b, clean) in enumerate(local.owners):
        if index != chunk:
            chunk, offset = index, local.offsets[index]
            sharing.next_window(offset)
        twin = sharing.find(offset + a, offset + b, clean)
        if twin is None:
            sharing.add(offset + a, offset + b, clean, row)
        else:
            rows[row] = twin
    return LocalSpeakers(local.duration, local.offsets, local.activities, local.valid, local.owners,
                         local.embeddings[rows])


def piece_speakers(local: Any, reference: list, frame_step: float) -> np.ndarray:
    """The reference speaker (index into the sorted names) talking most in each piece's frames, -1 for none."""
    names = sorted({t.speaker for t in reference})
    frames = int(math.ceil(local.duration / frame_step)) + 2
    talking = np.zeros((frames, len(names)), dtype=bool)
    for t in reference:
        talking[int(round(t.start / frame_step)) : int(round(t.end / frame_step)), names.index(t.speaker)] = True
    out = []
    for chunk, speaker, a, b, _ in local.owners:
        where = np.flatnonzero(local.activities[chunk][a:b, speaker]) + a + local.offsets[chunk]
        votes = talking[where[where < frames]].sum(axis=0)
        out.append(int(np.argmax(votes)) if votes.sum() else -1)
    return np.array(out, dtype=np.int64)


class TunedDiarizer(SegmentationDiarizer):
    """The pipeline, remembering the clean pieces' owners and the window offsets for rules that use the timeline."""

    def finish(self, local: LocalSpeakers) -> Any:
        clean = [o for o in local.owners if o[4]]
        self.clean_owners = clean if len(clean) >= 2 else list(local.owners)
        self.local_offsets = local.offsets
        return super().finish(local)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache_dir", required=True, help="bench_diarization.py's --cache_dir (LocalSpeakers npz)")
    parser.add_argument("--work_dir", required=True, nargs="+", help="folders holding the reference NAME.rttm")
    parser.add_argument("--model_path", required=True, help="the embedding model the cache was made with")
    parser.add_argument("--collar", type=float, default=0.25)
    parser.add_argument("--rules", nargs="*", default=None, help="only the rules whose names contain these words")
    parser.add_argument("--share_same_audio", type=float, default=None,
                        help="for caches made with every piece embedded: share embeddings as the pipeline does "
                             "(SAME_AUDIO_SHARE, 0.9) before the rules run")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    from mvector.inference.classic_diarization import DiarizationConfig, PredictorEmbedder
    from mvector.inference.diarization import load_segmentation
    from mvector.inference.predictor import MVectorPredictor
    from mvector.inference.segmentation import find_segmentation_model

    folder = find_segmentation_model()
    if folder is None:
        raise SystemExit("segmentation_3_0 not found: mvector import segmentation_3_0")
    embedder = PredictorEmbedder(MVectorPredictor(args.model_path, use_gpu=False))
    network = load_segmentation(folder)
    recordings = []
    for path in sorted(Path(args.cache_dir).glob("*.npz")):
        stem = path.name.split(".")[0]
        refs = [Path(d) / f"{stem}.rttm" for d in args.work_dir if (Path(d) / f"{stem}.rttm").exists()]
        if refs:
            local = LocalSpeakers.load(path)
            if args.share_same_audio is not None:
                local = share_same_audio(local, args.share_same_audio)
            recordings.append((stem, local, read_rttm(refs[0])[stem]))
    if not recordings:
        raise SystemExit(f"no cached recording in {args.cache_dir} has a reference RTTM in {args.work_dir}")
    frame_step = float(network.frame_step)
    voices = []  # the clean pieces of each single voice of each recording (at least 8) and their cannot-links
    for _stem, local, ref in recordings:
        whose = piece_speakers(local, ref, frame_step)
        clean = np.array([o[4] for o in local.owners], dtype=bool)
        for k in range(len({t.speaker for t in ref})):
            if (clean & (whose == k)).sum() >= 8:
                own = [o for o, w, g in zip(local.owners, whose, clean) if w == k and g]
                voices.append((local.embeddings[clean & (whose == k)], cannot_links(own)))
    given = []
    for _stem, local, ref in recordings:
        n = len({t.speaker for t in ref})
        turns = SegmentationDiarizer(embedder, network, DiarizationConfig(num_speakers=n)).finish(local).turns
        given.append(diarization_error(ref, turns, collar=args.collar))
    given_der = sum(r.missed + r.false_alarm + r.confusion for r in given) / sum(r.total for r in given)
    report: dict = {"benchmark": "diarization count rules", "recordings": [r[0] for r in recordings],
                    "machine": machine_info(), "count_given_der": round(given_der, 4), "rules": {}}
    lines = ["| rule | DER count open | / count given | count exact | single voices as one | count errors |",
             "|---|---|---|---|---|---|"]
    for name, (overrides, cluster) in rules().items():
        if args.rules and not any(word in name for word in args.rules):
            continue
        began = time.perf_counter()
        kind = TunedDiarizer if cluster is None else type("Rule", (TunedDiarizer,), {"cluster_pieces": cluster})
        errors, scored = [], []
        for _stem, local, ref in recordings:
            turns = kind(embedder, network, DiarizationConfig(**overrides)).finish(local).turns
            scored.append(diarization_error(ref, turns, collar=args.collar))
            errors.append(len({t.speaker for t in turns}) - len({t.speaker for t in ref}))
        single = kind(embedder, network, DiarizationConfig(**overrides))
        ones = sum(int(single.cluster_pieces(x, np.ones(len(x)), None, cannot).max() == 0) for x, cannot in voices)
        der = sum(r.missed + r.false_alarm + r.confusion for r in scored) / sum(r.total for r in scored)
        exact = sum(e == 0 for e in errors)
        report["rules"][name] = {"der": round(der, 4), "ratio_to_given": round(der / given_der, 2),
                                 "count_exact": f"{exact}/{len(errors)}", "count_errors": errors,
                                 "single_voices_as_one": f"{ones}/{len(voices)}",
                                 "seconds": round(time.perf_counter() - began, 1)}
        lines.append(f"| {name} | {100 * der:.1f} % | {der / given_der:.2f}x | {exact}/{len(errors)} | "
                     f"{ones}/{len(voices)} | {errors} |")
        print(lines[-1], file=sys.stderr, flush=True)
    print(f"count given: {100 * given_der:.1f} %\n" + "\n".join(lines), file=sys.stderr)
    emit(report)


if __name__ == "__main__":
    sys.exit(main())
