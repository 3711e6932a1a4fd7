"""Diarization pipeline: speech detection, clustering, re-segmentation, names, bounded memory, command line.

Most tests use "tone speakers" (each speaker a pitch, talking in syllable-like bursts) and an embedder that
measures the energy at each speaker's pitch: the pipeline's own steps (VAD, windows, clustering, Viterbi
re-segmentation, naming, streaming) are then tested against exactly known turns in a fraction of a second. One
end-to-end run goes through the command line with a real (tiny) model checkpoint.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from mvector.audio.vad import VADConfig, detect_speech
from mvector.data.conversations import generate_conversation, write_conversation
from mvector.data.rttm import Segment, read_rttm
from mvector.errors import AudioError, ConfigError
from mvector.evaluation.der import diarization_error
from mvector.inference.classic_diarization import DiarizationConfig, Diarizer
from mvector.inference.clustering import (
    absorb_small_clusters,
    agglomerative_clustering,
    cluster_embeddings,
    merge_similar_clusters,
    spectral_clustering,
)
from mvector.inference.diarization import diarize_with_predictor

SR = 8000
PITCHES = (300.0, 470.0, 730.0, 1130.0, 1750.0)


class ToneSource:
    """A conversation voice source: speaker ``toneK`` hums at ``PITCHES[K]`` in bursts of 0.1-0.25 s."""

    sample_rate = SR

    def speakers(self) -> list[str]:
        return [f"tone{k}" for k in range(len(PITCHES))]

    def speech(self, speaker: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
        f0 = PITCHES[int(speaker[4:])]
        out = np.zeros(int(seconds * SR), dtype=np.float32)
        pos = 0
        while pos < len(out):
            n = int(rng.uniform(0.1, 0.25) * SR)
            t = np.arange(n) / SR
            burst = np.hanning(n) * (np.sin(2 * np.pi * f0 * t) + 0.3 * np.sin(4 * np.pi * f0 * t))
            out[pos : pos + n] = burst[: len(out) - pos]
            pos += n + int(rng.uniform(0.02, 0.06) * SR)
        return out


class PitchEmbedder:
    """Square roots of the energy fractions at each speaker's pitch: a perfect "speaker model" for tones."""

    sample_rate = SR
    threshold = 0.5

    def __init__(self) -> None:
        self.calls = 0

    def embed_waveforms(self, waves):
        self.calls += 1
        out = []
        for w in waves:
            spec = np.abs(np.fft.rfft(w)) ** 2
            hz = np.fft.rfftfreq(len(w), 1.0 / SR)
            bands = [spec[(np.abs(hz - f) <= 15) | (np.abs(hz - 2 * f) <= 15)].sum() for f in PITCHES]
            out.append(np.sqrt(np.asarray(bands) / (sum(bands) + 1e-9)) + 0.02)
        return np.asarray(out, dtype=np.float32)


def tone_conversation(num_speakers: int, duration: float = 40.0, seed: int = 0, **plan):
    plan = {"min_turn": 1.0, "max_turn": 5.0, "min_pause": 0.3, "max_pause": 1.0, **plan}
    return generate_conversation(num_speakers, duration, source=ToneSource(), seed=seed, sample_rate=SR, **plan)


# ---------------------------------------------------------------- speech detection
def test_vad_finds_the_speech_of_a_conversation():
    conv = generate_conversation(2, 20.0, seed=5, sample_rate=16000, min_turn=1.5, max_turn=4.0)
    found = detect_speech(conv.samples, 16000)
    as_one = [Segment(t.start, t.end, "s") for t in conv.turns]
    r = diarization_error(as_one, [Segment(s, e, "s") for s, e in found])
    assert r.missed / r.total < 0.08 and r.false_alarm / r.total < 0.08, r.as_dict()


def test_vad_settings_are_checked():
    with pytest.raises(ConfigError, match="low <= high"):
        VADConfig(low=0.5, high=0.2)
    with pytest.raises(ConfigError, match="min_silence"):
        VADConfig(min_silence=-1)


# ---------------------------------------------------------------- clustering on constructed embeddings
def clusters(k: int, per: int = 25, dim: int = 32, spread: float = 0.35, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim))
    labels = np.repeat(np.arange(k), per)
    return centres[labels] + spread * np.sqrt(dim) / 4 * rng.standard_normal((k * per, dim)) / 2, labels


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_spectral_eigengap_finds_the_number_of_speakers(k):
    emb, truth = clusters(k, seed=k)
    labels = spectral_clustering(emb, min_speakers=1, max_speakers=8)
    assert labels.max() + 1 == k
    assert all(len(set(labels[truth == c])) == 1 for c in range(k))


def test_speaker_count_bounds_and_fixed_count():
    emb, _ = clusters(4, seed=1)
    assert spectral_clustering(emb, num_speakers=2).max() + 1 == 2
    assert spectral_clustering(emb, max_speakers=3).max() + 1 <= 3
    assert spectral_clustering(emb, min_speakers=5, max_speakers=6).max() + 1 >= 5
    assert agglomerative_clustering(emb, threshold=0.99, max_speakers=3).max() + 1 == 3
    assert agglomerative_clustering(emb, threshold=-1.0, min_speakers=2).max() + 1 == 2
    with pytest.raises(ConfigError, match="min_speakers"):
        spectral_clustering(emb, min_speakers=3, max_speakers=2)


def test_one_speaker_is_merged_back_into_one():
    emb, _ = clusters(1, per=60, seed=2)
    labels = cluster_embeddings(emb, method="spectral", merge_threshold=0.5)
    assert labels.max() == 0
    two, _ = clusters(2, seed=3)
    assert cluster_embeddings(two, method="spectral", merge_threshold=0.5).max() == 1
    assert merge_similar_clusters(two, np.repeat([0, 1], 25), threshold=0.5, min_speakers=1).max() == 1


def test_stray_windows_join_the_nearest_speaker():
    emb, truth = clusters(2, per=20, seed=5)
    labels = truth.copy()
    labels[[3, 25]] = [2, 3]  # two one-window clusters
    fixed = absorb_small_clusters(emb, labels, min_size=3)
    assert fixed.max() == 1 and np.array_equal(fixed, truth)
    assert absorb_small_clusters(emb, labels, min_size=3, min_speakers=4).max() == 3  # would leave too few
    # a known count goes to spectral clustering, an open one to agglomerative clustering at the threshold
    assert cluster_embeddings(emb, num_speakers=2).max() == 1
    assert cluster_embeddings(emb, threshold=0.2).max() == 1
    with pytest.raises(ConfigError, match="needs a threshold"):
        cluster_embeddings(emb)


def test_subsampled_clustering_matches_full():
    emb, truth = clusters(3, per=50, seed=4)
    full = cluster_embeddings(emb, method="spectral")
    sub = cluster_embeddings(emb, method="spectral", max_points=40)
    assert np.array_equal(full, sub) and all(len(set(sub[truth == c])) == 1 for c in range(3))


def test_clustering_rejects_bad_input():
    with pytest.raises(ConfigError, match="NaN"):
        cluster_embeddings(np.array([[np.nan, 1.0]]))
    with pytest.raises(ConfigError, match="unknown clustering"):
        cluster_embeddings(np.ones((3, 2)), method="kmeans")
    with pytest.raises(ConfigError, match="non-empty"):
        cluster_embeddings(np.zeros((0, 4)))


# ---------------------------------------------------------------- the pipeline
@pytest.mark.parametrize("k", [2, 3, 4])
def test_pipeline_finds_speakers_and_turns(k):
    conv = tone_conversation(k, 45.0, seed=k)
    result = Diarizer(PitchEmbedder())(conv.samples, sample_rate=SR)
    assert result.num_speakers == k
    der = diarization_error(conv.turns, result.turns, collar=0.25)
    assert der.der < 0.03, der.as_dict()
    # overlap-free, sorted turns inside the recording
    assert all(a.end <= b.start + 1e-9 for a, b in zip(result.turns, result.turns[1:]))
    assert result.turns[-1].end <= result.duration + 1e-9


def test_resegmentation_places_boundaries_better_than_window_labels():
    conv = tone_conversation(3, 60.0, seed=11, min_pause=0.0, max_pause=0.15)  # turns nearly touch
    fine = Diarizer(PitchEmbedder(), DiarizationConfig(num_speakers=3))(conv.samples, sample_rate=SR)
    coarse = Diarizer(PitchEmbedder(), DiarizationConfig(num_speakers=3, resegment=False))(
        conv.samples, sample_rate=SR
    )
    der_fine = diarization_error(conv.turns, fine.turns).der
    der_coarse = diarization_error(conv.turns, coarse.turns).der
    assert der_fine < der_coarse * 0.85, (der_fine, der_coarse)


def test_fixed_and_bounded_speaker_counts_in_the_pipeline():
    conv = tone_conversation(3, 30.0, seed=7)
    assert Diarizer(PitchEmbedder(), DiarizationConfig(num_speakers=2))(conv.samples, SR).num_speakers == 2
    assert Diarizer(PitchEmbedder(), DiarizationConfig(max_speakers=2))(conv.samples, SR).num_speakers <= 2
    ahc = Diarizer(PitchEmbedder(), DiarizationConfig(clustering="agglomerative", threshold=0.5))(conv.samples, SR)
    assert ahc.num_speakers == 3


def test_file_streaming_gives_the_same_turns_as_memory(tmp_path):
    # written at 16 kHz, the embedder works at 8 kHz: the file path is streamed through a soxr resampling stream
    wav, _ = write_conversation(tmp_path, "c", 2, 30.0, source=_Resampled(), seed=1, sample_rate=16000,
                                min_turn=1.0, max_turn=4.0)
    conf = DiarizationConfig(block_seconds=7.0)
    from mvector.audio import load_audio

    streamed = Diarizer(PitchEmbedder(), conf)(wav)
    whole = Diarizer(PitchEmbedder(), conf)(load_audio(str(wav), SR), sample_rate=SR)
    assert len(streamed.turns) == len(whole.turns)
    assert all(a.speaker == b.speaker and abs(a.start - b.start) < 0.02 and abs(a.end - b.end) < 0.02
               for a, b in zip(streamed.turns, whole.turns))


class _Resampled(ToneSource):
    sample_rate = 16000

    def speech(self, speaker, seconds, rng):
        from mvector.audio import resample

        return resample(super().speech(speaker, seconds, rng), SR, 16000)


def test_silence_gives_no_turns_and_bad_input_is_an_error(tmp_path):
    result = Diarizer(PitchEmbedder())(np.zeros(SR * 3, dtype=np.float32), sample_rate=SR)
    assert result.turns == [] and result.num_windows == 0 and result.to_rttm("x") == ""
    with pytest.raises(AudioError, match="not found"):
        Diarizer(PitchEmbedder())(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(AudioError, match="bad.wav"):
        Diarizer(PitchEmbedder())(bad)
    with pytest.raises(ConfigError, match="hop"):
        DiarizationConfig(window=1.0, hop=2.0)


# ---------------------------------------------------------------- names from a speaker database
def test_enrolled_speakers_are_named(tmp_path):
    from mvector.inference.speaker_db import SpeakerDatabase

    conv = tone_conversation(3, 30.0, seed=2)
    emb = PitchEmbedder()
    with SpeakerDatabase(tmp_path / "db", "tones", len(PITCHES)) as db:
        # alice hums at the pitch of "tone<k>" for the first speaker of the conversation; bob at an absent pitch
        first = int(conv.speakers[0][4:])
        absent = next(k for k in range(len(PITCHES)) if f"tone{k}" not in conv.speakers)
        t = np.arange(SR) / SR
        db.add("alice", emb.embed_waveforms([np.sin(2 * np.pi * PITCHES[first] * t).astype(np.float32)]))
        db.add("bob", emb.embed_waveforms([np.sin(2 * np.pi * PITCHES[absent] * t).astype(np.float32)]))
        result = Diarizer(emb, speaker_db=db)(conv.samples, sample_rate=SR)
        names = {t.speaker for t in result.turns}
        assert names == {"alice", "speaker_0", "speaker_1"}
        assert result.speakers["alice"]["name"] == "alice" and result.speakers["alice"]["score"] > 0.9
        assert result.speakers["speaker_0"]["name"] is None
        ref = [Segment(t.start, t.end, "alice" if t.speaker == conv.speakers[0] else t.speaker) for t in conv.turns]
        r = diarization_error(ref, result.turns, collar=0.25)
        assert r.mapping["alice"] == "alice" and r.der < 0.03
        strict = Diarizer(emb, DiarizationConfig(name_threshold=1.01), speaker_db=db)(conv.samples, sample_rate=SR)
        assert "alice" not in {t.speaker for t in strict.turns}


# ---------------------------------------------------------------- memory does not grow with the length
def _peak_bytes(path, config) -> int:
    tracemalloc.start()
    try:
        result = Diarizer(PitchEmbedder(), config)(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.num_speakers == 2
    return peak


def test_memory_does_not_grow_with_the_recording_length(tmp_path):
    conf = DiarizationConfig(block_seconds=8.0, max_cluster_windows=150, num_speakers=2, batch_size=8)
    plan = {"min_turn": 2.0, "max_turn": 8.0, "source": ToneSource(), "sample_rate": SR}
    short, _ = write_conversation(tmp_path, "short", 2, 120.0, seed=0, **plan)
    long, _ = write_conversation(tmp_path, "long", 2, 480.0, seed=0, **plan)
    peak_short = _peak_bytes(short, conf)
    peak_long = _peak_bytes(long, conf)
    audio_long = 480 * SR * 4  # the long recording as float32
    # what grows is ~8 bytes per 10 ms frame and one small embedding per window, not the audio
    assert peak_long < 1.3 * peak_short, (peak_short, peak_long)
    assert peak_long < audio_long / 2, (peak_long, audio_long)


# ---------------------------------------------------------------- predictor and command line
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from mvector.demo import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def test_predictor_entry_point_options(tiny_model):
    from mvector.inference.predictor import MVectorPredictor

    with MVectorPredictor(tiny_model, use_gpu=False) as p:
        with pytest.raises(ConfigError, match="did you mean 'num_speakers'"):
            diarize_with_predictor(p, (np.zeros(SR, "float32"), SR), num_speaker=2)
        with pytest.raises(ConfigError, match="bad diarization option"):
            diarize_with_predictor(p, (np.zeros(SR, "float32"), SR), vad={"no_such_key": 1})
        with pytest.raises(ConfigError, match="min_speakers <= max_speakers"):
            diarize_with_predictor(p, (np.zeros(SR, "float32"), SR), min_speakers=3, max_speakers=2)


def test_command_line_end_to_end(tiny_model, tmp_path, capsys):
    from mvector.cli.diarize import main
    from mvector.inference.predictor import MVectorPredictor

    wav, rttm = write_conversation(tmp_path, "talk", 2, 10.0, seed=3, min_turn=2.0, max_turn=4.0)
    out = tmp_path / "out"
    code = main([str(wav), "--model_path", str(tiny_model), "--output_dir", str(out), "--num_speakers", "2",
                 "--plot", "--reference", str(rttm), "--progress", "false"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    turns = read_rttm(out / "talk.rttm")["talk"]
    assert turns and {t.speaker for t in turns} <= {"speaker_0", "speaker_1"}
    data = json.loads((out / "talk.json").read_text())
    assert data["file"] == "talk" and len(data["turns"]) == len(turns) and data["config"]["num_speakers"] == 2
    assert (out / "talk.png").stat().st_size > 1000 and 0.0 <= summary["der"]["der"] <= 2.0
    assert summary["real_time_factor"] > 0

    # an enrolled speaker's name replaces speaker_N (one speaker asked for, enrolled from this very recording)
    db_dir = tmp_path / "db"
    with MVectorPredictor(tiny_model, audio_db_path=db_dir, use_gpu=False) as p:
        p.register("alice", str(wav))
    code = main([str(wav), "--model_path", str(tiny_model), "--output_dir", str(out), "--num_speakers", "1",
                 "--audio_db_path", str(db_dir), "--name_threshold", "0.5", "--progress", "false"])
    assert code == 0 and {t.speaker for t in read_rttm(out / "talk.rttm")["talk"]} == {"alice"}

    assert main([str(tmp_path / "nope.wav"), "--model_path", str(tiny_model), "--progress", "false"]) == 2
    assert "error: " in capsys.readouterr().err


# ---------------------------------------------------------------- counting speakers (segmentation pipeline rule)
def _speaker_pieces(counts: list[int], seed: int, dim: int = 32, noise: float = 0.27) -> tuple[np.ndarray, np.ndarray]:
    """Piece embeddings of speakers with ``counts[k]`` pieces each: an orthogonal direction per speaker plus
    noise large enough that single pieces of one speaker are only about 0.5-0.6 alike (as short CAM++ pieces
    are)."""
    rng = np.random.default_rng(seed)
    centres = 1.6 * np.linalg.qr(rng.standard_normal((dim, len(counts))))[0].T  # distinct voices: orthogonal
    labels = np.repeat(np.arange(len(counts)), counts)
    emb = centres[labels] + noise * rng.standard_normal((len(labels), dim))
    order = rng.permutation(len(labels))  # interleaved in time, as pieces of a conversation are
    return emb[order], labels[order]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])).all())


def test_silhouette_equals_a_direct_count():
    from mvector.inference.clustering import normalize_rows, silhouette

    rng = np.random.default_rng(3)
    emb = normalize_rows(rng.standard_normal((23, 5)))
    labels = rng.integers(0, 4, 23)
    labels[0] = 5  # a singleton scores 0
    sim = emb @ emb.T
    expected = []
    for i in range(23):
        own = [j for j in range(23) if labels[j] == labels[i] and j != i]
        if not own:
            expected.append(0.0)
            continue
        a = np.mean([1 - sim[i, j] for j in own])
        b = min(np.mean([1 - sim[i, j] for j in range(23) if labels[j] == k]) for k in set(labels) - {labels[i]})
        expected.append((b - a) / max(a, b))
    assert silhouette(sim, labels) == pytest.approx(np.mean(expected), abs=1e-12)


@pytest.mark.parametrize("speakers", [2, 3, 4, 5, 6, 7])
def test_count_by_silhouette_finds_the_number_of_speakers(speakers):
    """2..7 speakers, unequal amounts of speech, max_speakers 8: the count and the partition are found."""
    from mvector.inference.clustering import count_by_silhouette, normalize_rows

    counts = [12 + 7 * ((3 * k) % 5) for k in range(speakers)]
    emb, truth = _speaker_pieces(counts, seed=speakers)
    unit = normalize_rows(emb)
    same = (unit @ unit.T)[truth[:, None] == truth[None, :]]
    assert np.median(same[same < 0.999]) < 0.7  # pieces of one speaker are far from identical
    labels = count_by_silhouette(emb, 1, 8, min_cluster_size=8)
    assert int(labels.max()) + 1 == speakers
    assert _same_partition(labels, truth)


def test_count_by_silhouette_one_speaker_bounds_and_small_clusters():
    from mvector.inference.clustering import count_by_silhouette

    one, _ = _speaker_pieces([60], seed=1)
    assert count_by_silhouette(one, 1, 8, 8, same_speaker=0.75).max() == 0
    assert count_by_silhouette(one, 2, 8, 8, same_speaker=0.75).max() == 1  # min_speakers=2: the fewest allowed
    five, truth = _speaker_pieces([20] * 5, seed=2)
    assert int(count_by_silhouette(five, 1, 3, 8).max()) + 1 == 3  # max_speakers
    assert int(count_by_silhouette(five, 6, 8, 1).max()) + 1 == 6  # min_speakers
    # three speakers and two stray pieces of a fourth voice: clusters under 8 pieces are not candidates
    three, truth = _speaker_pieces([25, 25, 25, 2], seed=4)
    labels = count_by_silhouette(three, 1, 8, min_cluster_size=8)
    assert int(labels.max()) + 1 == 3
    keep = truth < 3
    assert _same_partition(labels[keep], truth[keep])
    # nothing qualifies (every cluster too small): one speaker, or the fewest allowed
    tiny, _ = _speaker_pieces([3, 3], seed=5)
    assert count_by_silhouette(tiny, 1, 8, min_cluster_size=8).max() == 0
    assert int(count_by_silhouette(tiny, 2, 8, min_cluster_size=8).max()) + 1 == 2


@pytest.mark.parametrize("speakers", [2, 3, 4, 5, 6, 7])
def test_count_by_eigengap_finds_the_number_of_speakers(speakers):
    """2..7 speakers, unequal amounts of speech, max_speakers 8: the count and the partition are found."""
    from mvector.inference.clustering import count_by_eigengap

    counts = [12 + 7 * ((3 * k) % 5) for k in range(speakers)]
    emb, truth = _speaker_pieces(counts, seed=speakers)
    labels = count_by_eigengap(emb, 1, 8, min_cluster_size=8, same_speaker=0.65)
    assert int(labels.max()) + 1 == speakers
    assert _same_partition(labels, truth)


def test_count_by_eigengap_lowers_the_count_past_small_clusters():
    """Three speakers and a few stray pieces of a fourth voice: a cluster under min_cluster_size is no speaker."""
    from mvector.inference.clustering import count_by_eigengap, spectral_clustering

    emb, truth = _speaker_pieces([25, 25, 25, 6], seed=4)
    assert int(spectral_clustering(emb, None, 2, 8).max()) + 1 == 4  # the eigengap alone sees the strays
    labels = count_by_eigengap(emb, 1, 8, min_cluster_size=8)
    assert int(labels.max()) + 1 == 3
    keep = truth < 3
    assert _same_partition(labels[keep], truth[keep])
    assert int(count_by_eigengap(emb, 1, 8, min_cluster_size=1).max()) + 1 == 4  # the strays allowed: 4


def test_count_by_eigengap_one_speaker_and_bounds():
    from mvector.inference.clustering import count_by_eigengap

    one, _ = _speaker_pieces([60], seed=1)
    assert count_by_eigengap(one, 1, 8, 8, same_speaker=0.65).max() == 0
    assert count_by_eigengap(one, 1, 8, 8, same_speaker=1.0).max() >= 1  # no one-speaker test: split
    assert int(count_by_eigengap(one, 2, 8, 8, same_speaker=0.65).max()) + 1 >= 2  # min_speakers=2 honoured
    two, truth = _speaker_pieces([30, 30], seed=6)
    assert _same_partition(count_by_eigengap(two, 1, 8, 8, same_speaker=0.65), truth)  # distinct: not merged
    five, _ = _speaker_pieces([20] * 5, seed=2)
    assert 2 <= int(count_by_eigengap(five, 1, 3, 8).max()) + 1 <= 3  # max_speakers
    assert int(count_by_eigengap(five, 6, 8, 1).max()) + 1 >= 6  # min_speakers
    assert count_by_eigengap(five, 1, 1).max() == 0  # max_speakers=1
    tiny, _ = _speaker_pieces([3, 3], seed=5)  # every cluster too small: the fewest counted, two
    assert int(count_by_eigengap(tiny, 2, 8, min_cluster_size=8).max()) + 1 == 2


def test_segmentation_pipeline_clustering_step_honours_its_settings():
    """Count open: the eigengap rule; ``threshold`` given: the threshold rule; ``num_speakers``: that many."""
    from types import SimpleNamespace

    from mvector.inference.segmentation_diarization import SegmentationDiarizer

    network = SimpleNamespace(sample_rate=16000, frame_step=0.016875, frame_duration=0.0619,
                              num_frames=lambda samples: 589)
    emb, truth = _speaker_pieces([30, 22, 40, 18], seed=7)
    seconds = np.full(len(emb), 2.0)

    def labels(**settings: object) -> np.ndarray:
        diarizer = SegmentationDiarizer(PitchEmbedder(), network, DiarizationConfig(**settings))
        return diarizer.cluster_pieces(emb, seconds)

    assert _same_partition(labels(), truth)
    assert labels(threshold=-0.5).max() == 0  # the threshold rule: every cluster is alike enough to merge
    assert int(labels(num_speakers=2).max()) + 1 == 2
    assert int(labels(max_speakers=3).max()) + 1 == 3


def test_local_speakers_round_trip_and_a_wrong_file(tmp_path):
    from mvector.inference.segmentation_diarization import LocalSpeakers

    rng = np.random.default_rng(0)
    acts = [rng.integers(0, 2, (589, 3)).astype(np.uint8) for _ in range(3)]
    local = LocalSpeakers(17.5, [0, 148, 296], acts, [589, 589, 400], [(0, 1, 3, 90, True), (2, 0, 5, 9, False)],
                          rng.standard_normal((2, 192)).astype(np.float32))
    again = LocalSpeakers.load(local.save(tmp_path / "rec.npz"))
    assert again.owners == local.owners and again.offsets == local.offsets and again.valid == local.valid
    assert all((a == b).all() for a, b in zip(again.activities, acts))
    assert np.array_equal(again.embeddings, local.embeddings) and again.duration == 17.5
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ConfigError, match="other.npz"):
        LocalSpeakers.load(tmp_path / "other.npz")


@pytest.mark.parametrize("rule", ["count_by_silhouette", "count_by_eigengap"])
def test_count_rules_subsample_long_recordings(rule):
    """Above max_points pieces a subsample is clustered (memory bounded) and every piece still gets its speaker."""
    from mvector.inference import clustering

    count = getattr(clustering, rule)
    emb, truth = _speaker_pieces([70, 50, 90], seed=11)
    labels = count(emb, 1, 8, min_cluster_size=8, max_points=60)
    assert len(labels) == 210 and _same_partition(labels, truth)
    with pytest.raises(ConfigError, match="max_points"):
        count(emb, max_points=1)
