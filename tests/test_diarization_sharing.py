"""The segmentation pipeline embeds each stretch of audio once: pieces of later windows over the same audio share.

A "tone segmenter" stands in for the network: it marks a local speaker active where that tone speaker's pitch
holds most of a frame's energy, so the windows, pieces and shares are those of a real run on exactly known turns.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mvector.evaluation.der import diarization_error
from mvector.inference.classic_diarization import DiarizationConfig
from mvector.inference.segmentation import Segmenter
from mvector.inference.segmentation_diarization import SegmentationDiarizer, shared_piece
from tests.test_diarization import PITCHES, SR, PitchEmbedder, tone_conversation

FRAME_STEP = 0.016875


class ToneSegmenter(Segmenter):
    """Local speaker ``k`` is active in a frame where ``pitches[k]`` holds much of the energy within 70 ms."""

    pitches: tuple[float, ...] = ()

    def activities(self, waves: np.ndarray) -> np.ndarray:
        size = int(round(self.frame_duration * self.sample_rate))
        out = np.zeros((len(waves), self.num_frames, 3), dtype=np.uint8)
        hz = np.fft.rfftfreq(size, 1.0 / self.sample_rate)
        bands = [(np.abs(hz - f) <= 40) | (np.abs(hz - 2 * f) <= 40) for f in self.pitches]
        for b, wave in enumerate(np.asarray(waves, dtype=np.float32)):
            starts = np.arange(self.num_frames) * self.samples_per_frame
            frames = np.stack([np.pad(wave[s : s + size], (0, max(0, s + size - len(wave)))) for s in starts])
            spec = np.abs(np.fft.rfft(frames * np.hanning(size), axis=1)) ** 2
            total = spec.sum(axis=1) + 1e-9
            for k, band in enumerate(bands):
                on = (spec[:, band].sum(axis=1) > 0.3 * total) & (total > 1e-3)
                padded = np.pad(on, 4)  # bridge the gaps between a speaker's bursts
                out[b, :, k] = np.stack([padded[i : i + len(on)] for i in range(9)]).any(axis=0)
        return out


class CountingEmbedder(PitchEmbedder):
    """:class:`PitchEmbedder` remembering how many pieces it embedded."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces = 0

    def embed_waveforms(self, waves):
        self.pieces += len(waves)
        return super().embed_waveforms(waves)


def _diarizer(embedder: PitchEmbedder, speakers: list[str], **settings: object) -> SegmentationDiarizer:
    """The pipeline with a :class:`ToneSegmenter` for the (at most three) tone ``speakers`` of the recording."""
    network = SimpleNamespace(sample_rate=SR, frame_step=FRAME_STEP, frame_duration=0.0619,
                              num_frames=lambda samples: int(samples / SR / FRAME_STEP))
    diarizer = SegmentationDiarizer(embedder, network, DiarizationConfig(**settings))
    diarizer.segmenter = ToneSegmenter(network, duration=10.0, step=diarizer.config.segmentation_step)
    diarizer.segmenter.pitches = tuple(PITCHES[int(name[4:])] for name in sorted(speakers))
    return diarizer


def _spans(local) -> tuple[np.ndarray, np.ndarray]:
    start = np.array([local.offsets[o[0]] + o[2] for o in local.owners])
    end = np.array([local.offsets[o[0]] + o[3] for o in local.owners])
    return start, end


def test_shared_piece_takes_the_most_shared_of_the_same_kind():
    recent = [(0, 100, True, 0), (2, 101, True, 1), (0, 100, False, 2)]
    assert shared_piece(recent, 1, 100, True, 0.9) == 0  # 99/100 against 98/100
    assert shared_piece(recent, 0, 100, False, 0.9) == 2  # only a piece of its own kind
    assert shared_piece(recent, 0, 89, True, 0.9) is None  # 89/100: not more than 0.9
    assert shared_piece(recent, 200, 300, True, 0.0) is None  # no overlap at all
    assert shared_piece([], 0, 10, True, 0.5) is None


def test_each_stretch_of_audio_is_embedded_about_once_and_the_turns_are_found():
    conv = tone_conversation(3, duration=60.0, seed=11)
    wave, reference = conv.samples, conv.turns
    embedder = CountingEmbedder()
    diarizer = _diarizer(embedder, sorted({t.speaker for t in reference}))
    local = diarizer.segment_and_embed((wave, SR))
    assert embedder.pieces == len(np.unique(local.embeddings, axis=0))
    # windows every 2.5 s see each second about four times; here about one piece in two is embedded (all without
    # the sharing)
    assert embedder.pieces < 0.6 * len(local.owners)
    start, end = _spans(local)
    chunk = np.array([o[0] for o in local.owners])
    clean = np.array([o[4] for o in local.owners])
    for row in range(len(local.owners)):
        same = np.flatnonzero((local.embeddings == local.embeddings[row]).all(axis=1))
        first = same[0]
        if first == row:
            continue
        # a shared embedding comes from an earlier window's piece of the same kind over (nearly) the same audio
        assert chunk[first] < chunk[row] and clean[first] == clean[row]
        union = max(end[row], end[first]) - min(start[row], start[first])
        assert (min(end[row], end[first]) - max(start[row], start[first])) / union > 0.9
    result = _diarizer(PitchEmbedder(), [], num_speakers=3).finish(local)  # the count rules: tested elsewhere
    error = diarization_error(reference, result.turns, collar=0.25)
    assert error.der < 0.05, error.as_dict()


def test_a_shared_embedding_is_what_the_piece_would_have_had(monkeypatch):
    conv = tone_conversation(3, duration=40.0, seed=5)
    wave, speakers = conv.samples, sorted({t.speaker for t in conv.turns})
    shared_local = _diarizer(PitchEmbedder(), speakers).segment_and_embed((wave, SR))
    monkeypatch.setattr("mvector.inference.segmentation_diarization.SAME_AUDIO_SHARE", 1.0)  # never shares
    embedder = CountingEmbedder()
    own_local = _diarizer(embedder, speakers).segment_and_embed((wave, SR))
    assert own_local.owners == shared_local.owners
    assert embedder.pieces == len(own_local.owners)  # every piece embedded
    shared = np.flatnonzero((shared_local.embeddings != own_local.embeddings).any(axis=1))
    assert len(shared) > len(own_local.owners) / 3
    a, b = shared_local.embeddings[shared], own_local.embeddings[shared]
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.95


@pytest.mark.parametrize("batch_size", [1, 3])
def test_embeddings_do_not_depend_on_how_pieces_are_batched(batch_size):
    conv = tone_conversation(2, duration=30.0, seed=2)
    wave, speakers = conv.samples, sorted({t.speaker for t in conv.turns})
    base = _diarizer(PitchEmbedder(), speakers).segment_and_embed((wave, SR))
    other = _diarizer(PitchEmbedder(), speakers, batch_size=batch_size).segment_and_embed((wave, SR))
    assert other.owners == base.owners
    np.testing.assert_allclose(other.embeddings, base.embeddings, atol=1e-6)
