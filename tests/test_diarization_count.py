"""The count rules' corrections after the eigengap: same-audio must-links merge a split voice, distinct halves split.

Synthetic piece embeddings with known voices, and pieces laid out on overlapping windows with known timing.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mvector.errors import ConfigError
from mvector.inference.classic_diarization import DiarizationConfig
from mvector.inference.clustering import (
    cluster_centroids,
    count_by_eigengap,
    merge_linked_clusters,
    one_voice,
    split_distinct_clusters,
)
from mvector.inference.segmentation_diarization import (
    ONE_SPEAKER_DISTINCT,
    ONE_SPEAKER_HALVES,
    ONE_SPEAKER_SIMILARITY,
    TWO_VOICE_CANNOT_SHARE,
    TWO_VOICE_MIN_CANNOT,
    SegmentationDiarizer,
    cannot_links,
    same_audio_links,
)


def _voices(counts: list[int], centres: np.ndarray, seed: int, noise: float = 0.27) -> tuple[np.ndarray, np.ndarray]:
    """Pieces around ``centres[k]`` (``counts[k]`` each), interleaved; returns embeddings and the true voice."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    emb = centres[labels] + noise * rng.standard_normal((len(labels), centres.shape[1]))
    order = rng.permutation(len(labels))
    return emb[order], labels[order]


def _orthogonal(k: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    return 1.6 * np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))[0].T


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])).all())


def _split_voice(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voice 0 has two "moods" (sub-centres 0.7 alike) that the eigengap takes for two speakers; voice 1 is
    distinct. Returns embeddings, the true voice, and the mood (0, 1 for voice 0; 2 for voice 1)."""
    base = _orthogonal(3, seed=seed)
    mood_b = 0.7 * base[0] + np.sqrt(1 - 0.7**2) * base[2]  # 0.7 alike to mood a, orthogonal to voice 1
    emb, mood = _voices([40, 40, 40], np.stack([base[0], mood_b, base[1]]), seed=seed, noise=0.15)
    return emb, np.where(mood == 2, 1, 0), mood


def test_same_audio_links_match_a_direct_count():
    """The sweep finds exactly the pairs of different windows sharing more than half of their union."""
    rng = np.random.default_rng(0)
    offsets = [148 * i for i in range(12)]  # 10 s windows every 2.5 s on the 16.9 ms grid
    owners = []
    for chunk in range(12):
        for _ in range(int(rng.integers(1, 5))):
            a = int(rng.integers(0, 500))
            owners.append((chunk, int(rng.integers(0, 3)), a, a + int(rng.integers(30, 178)), True))
    links = same_audio_links(owners, offsets)
    want = set()
    for i, p in enumerate(owners):
        for j, q in enumerate(owners[:i]):
            s1, e1, s2, e2 = offsets[p[0]] + p[2], offsets[p[0]] + p[3], offsets[q[0]] + q[2], offsets[q[0]] + q[3]
            shared = min(e1, e2) - max(s1, s2)
            if p[0] != q[0] and shared / (max(e1, e2) - min(s1, s2)) > 0.5:
                want.add((j, i))
    assert {tuple(x) for x in links.tolist()} == want and len(want) > 10
    assert same_audio_links([], []).shape == (0, 2)


def test_linked_clusters_of_one_voice_are_merged():
    emb, voice, mood = _split_voice()
    first = count_by_eigengap(emb, 1, 8, min_cluster_size=8, same_speaker=0.65)
    assert int(first.max()) + 1 == 3 and _same_partition(first, mood)  # the eigengap alone: one voice as two
    a, b = np.flatnonzero(mood == 0), np.flatnonzero(mood == 1)
    rng = np.random.default_rng(1)
    inside = np.stack([rng.choice(a, 30), rng.choice(a, 30)], axis=1)
    inside = np.concatenate([inside, np.stack([rng.choice(b, 30), rng.choice(b, 30)], axis=1)])
    across = np.stack([a[:15], b[:15]], axis=1)  # the same audio seen by two windows, put in both moods
    merged = merge_linked_clusters(first, np.concatenate([inside, across]), ratio=0.3)
    assert _same_partition(merged, voice)
    few = np.concatenate([inside, across[:3]])  # a few links across (segmentation slips): kept apart
    assert _same_partition(merge_linked_clusters(first, few, ratio=0.3), mood)
    assert int(merge_linked_clusters(first, np.concatenate([inside, across]), 0.3, min_speakers=3).max()) == 2
    with pytest.raises(ConfigError, match="links"):
        merge_linked_clusters(first, np.array([[0, len(first)]]), 0.3)


def test_distinct_halves_are_split_and_one_voice_is_not():
    emb, truth = _voices([30, 30, 30], _orthogonal(3, seed=2), seed=2)
    together = np.where(truth == 2, 1, truth)  # voices 1 and 2 in one cluster
    assert _same_partition(split_distinct_clusters(emb, together, 0.6, 8), truth)
    assert split_distinct_clusters(emb[truth == 0], np.zeros(30, int), 0.6, 8).max() == 0  # halves alike
    assert int(split_distinct_clusters(emb, together, 0.6, 8, max_speakers=2).max()) + 1 == 2  # max_speakers
    small, small_truth = _voices([40, 6], _orthogonal(2, seed=3), seed=3)  # 6 stray pieces: under min_size
    assert split_distinct_clusters(small, np.zeros(46, int), 0.6, 8).max() == 0
    assert _same_partition(split_distinct_clusters(small, np.zeros(46, int), 0.6, 5), small_truth)
    sub = split_distinct_clusters(emb, together, 0.6, 8, max_points=20)  # bisection of a subsample
    assert _same_partition(sub, truth)
    with pytest.raises(ConfigError, match="labels"):
        split_distinct_clusters(emb, together[:10], 0.6, 8)


def test_segmentation_pipeline_uses_the_links_with_the_count_open():
    network = SimpleNamespace(sample_rate=16000, frame_step=0.016875, frame_duration=0.0619,
                              num_frames=lambda samples: 589)
    emb, voice, mood = _split_voice(seed=4)
    a, b = np.flatnonzero(mood == 0), np.flatnonzero(mood == 1)
    links = np.concatenate([np.stack([a[:-1], a[1:]], 1), np.stack([b[:-1], b[1:]], 1), np.stack([a, b], 1)])
    seconds = np.full(len(emb), 2.0)

    def labels(links: np.ndarray | None, **settings: object) -> np.ndarray:
        embedder = SimpleNamespace(sample_rate=16000, embed_waveforms=lambda waves: np.zeros((len(waves), 32)))
        diarizer = SegmentationDiarizer(embedder, network, DiarizationConfig(**settings))
        return diarizer.cluster_pieces(emb, seconds, links)

    assert _same_partition(labels(links), voice)
    assert _same_partition(labels(None), mood)  # no links: the eigengap's three clusters stay
    assert int(labels(links, num_speakers=3).max()) + 1 == 3  # a given count is kept


def _look_alike(similarity: float, seed: int) -> np.ndarray:
    """Two voice centres ``similarity`` alike (norm 1.6)."""
    base = _orthogonal(2, seed=seed) / 1.6
    return 1.6 * np.stack([base[0], similarity * base[0] + np.sqrt(1 - similarity**2) * base[1]])


def _diarizer(**settings: object) -> SegmentationDiarizer:
    network = SimpleNamespace(sample_rate=16000, frame_step=0.016875, frame_duration=0.0619,
                              num_frames=lambda samples: 589)
    embedder = SimpleNamespace(sample_rate=16000, embed_waveforms=lambda waves: np.zeros((len(waves), 32)))
    return SegmentationDiarizer(embedder, network, DiarizationConfig(**settings))


def test_cannot_links_pair_the_local_speakers_of_each_window():
    rng = np.random.default_rng(5)
    owners = [(int(rng.integers(0, 6)), int(rng.integers(0, 3)), 0, 50, True) for _ in range(60)]
    want = {(i, j) for j in range(60) for i in range(j)
            if owners[i][0] == owners[j][0] and owners[i][1] != owners[j][1]}
    assert {tuple(x) for x in cannot_links(owners).tolist()} == want and len(want) > 20
    assert cannot_links([]).shape == (0, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_look_alike_voices_stay_two_when_the_segmentation_tells_them_apart(seed: int):
    """Two voices whose centroids are more alike than ONE_SPEAKER_SIMILARITY: alone, the similarity test makes one
    speaker of them; cannot-links that fall across the two halves keep them apart. One voice with cannot-links
    of its own (the network keeping it under two local labels now and then, at random) stays one."""
    diarizer = _diarizer()
    emb, truth = _voices([40, 40], _look_alike(0.8, seed), seed=seed, noise=0.12)
    centroids = cluster_centroids(emb, truth)
    assert float(centroids[0] @ centroids[1]) > ONE_SPEAKER_SIMILARITY  # the case the cannot-links are for
    seconds = np.full(len(emb), 2.0)
    rng = np.random.default_rng(seed)
    a, b = np.flatnonzero(truth == 0), np.flatnonzero(truth == 1)
    apart = np.sort(np.stack([rng.choice(a, 40), rng.choice(b, 40)], axis=1), axis=1)
    slips = np.sort(np.stack([rng.choice(a, 6), rng.choice(a, 6)], axis=1), axis=1)  # 8 of 46 within one voice
    assert diarizer.cluster_pieces(emb, seconds, None, None).max() == 0  # similarity alone: one speaker
    assert _same_partition(diarizer.cluster_pieces(emb, seconds, None, np.concatenate([apart, slips])), truth)
    for points in (2000, 30):  # all pieces, and the bisection of an even subsample
        assert one_voice(emb, truth, apart, ONE_SPEAKER_SIMILARITY, max_points=points)  # no veto asked for
        assert not one_voice(emb, truth, apart, ONE_SPEAKER_SIMILARITY, cannot_share=TWO_VOICE_CANNOT_SHARE,
                             min_cannot=TWO_VOICE_MIN_CANNOT, max_points=points)
    few = apart[: TWO_VOICE_MIN_CANNOT - 1]  # too few pairs to overrule the similarity
    assert diarizer.cluster_pieces(emb, seconds, None, few).max() == 0
    one, _ = _voices([80], _look_alike(0.8, seed)[:1], seed=seed + 10, noise=0.12)
    random_pairs = np.sort(rng.choice(80, (40, 2), replace=True), axis=1)
    random_pairs = random_pairs[random_pairs[:, 0] != random_pairs[:, 1]]
    assert diarizer.cluster_pieces(one, seconds, None, random_pairs).max() == 0  # one voice: one speaker
    assert _diarizer(min_speakers=2).cluster_pieces(one, seconds, None, random_pairs).max() >= 1  # min honoured


def _moods(k: int, alike: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One voice in ``k`` "moods" (sub-centres ``alike`` alike to each other), 15 pieces each."""
    base = _orthogonal(k + 1, seed=seed) / 1.6
    centres = 1.6 * (np.sqrt(alike) * base[0] + np.sqrt(1 - alike) * base[1:])
    return _voices([15] * k, centres, seed=seed, noise=0.1)


@pytest.mark.parametrize("seed", [0, 1])
def test_one_voice_split_by_the_eigengap_comes_out_as_one(seed: int):
    """A voice in six moods 0.55 alike: the eigengap finds six clusters, each two less alike than
    ONE_SPEAKER_SIMILARITY, yet any two halves of it are alike (ONE_SPEAKER_HALVES): one speaker. Six distinct
    voices have distinct halves and stay six."""
    emb, mood = _moods(6, 0.55, seed)
    seconds = np.full(len(emb), 2.0)
    first = count_by_eigengap(emb, 1, 8, min_cluster_size=8)
    assert int(first.max()) + 1 == 6 and _same_partition(first, mood)
    assert float((cluster_centroids(emb, first) @ cluster_centroids(emb, first).T).min()) < ONE_SPEAKER_SIMILARITY
    assert one_voice(emb, first, None, ONE_SPEAKER_SIMILARITY, ONE_SPEAKER_HALVES, ONE_SPEAKER_DISTINCT)
    assert not one_voice(emb, first, None, ONE_SPEAKER_SIMILARITY)  # the similarity test alone: six speakers
    assert _diarizer().cluster_pieces(emb, seconds).max() == 0
    voices, truth = _voices([15] * 6, _orthogonal(6, seed=seed), seed=seed, noise=0.1)
    assert _same_partition(_diarizer().cluster_pieces(voices, seconds), truth)
    with pytest.raises(ConfigError, match="cannot_links"):
        one_voice(emb, first, np.array([[0, len(emb)]]), 0.65)
