"""Enrolment: each quality check catches its problem and passes clean speech, warn/refuse/off policies, the
enrolment rules, enrol() through a predictor, removing one recording, and databases written before the cohort."""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

from mvector.audio import resample
from mvector.data.synthetic import make_voices, synthesize_utterance
from mvector.errors import AudioError, ConfigError, SpeakerDBError
from mvector.inference.enrolment import (
    EnrolmentRefused,
    QualityConfig,
    agreement_scores,
    analyse_recording,
    check_enrolment,
    combine_embeddings,
    enrol,
)
from mvector.inference.speaker_db import DB_FILENAME, SpeakerDatabase

SR = 16000


@pytest.fixture(scope="module")
def takes() -> list[np.ndarray]:
    voices = make_voices(2, seed=0)
    return [synthesize_utterance(voices[i % 2], 2.5, rng=np.random.default_rng(i)) for i in range(6)]


def checks_of(report) -> list[tuple[str, int | None]]:
    return [(i.check, i.recording) for i in report.issues]


def test_clean_speech_passes_every_check(takes) -> None:
    report = check_enrolment([(t, SR) for t in takes], SR, config=QualityConfig(policy="refuse"))
    assert report.issues == [] and report.ok
    assert all(m["speech_seconds"] > 1.0 and m["snr_db"] > 15 for m in report.measurements)


def test_each_check_catches_its_problem(takes) -> None:
    clean = takes[0]
    rng = np.random.default_rng(5)
    short = np.concatenate([np.zeros(SR // 2, "float32"), clean[: SR // 2], np.zeros(SR // 2, "float32")])
    clipped = np.clip(clean * 4, -0.6, 0.6)
    quiet = clean * 0.001
    noisy = clean + rng.normal(0, float(np.sqrt(np.mean(clean**2))), clean.size).astype("float32")
    upsampled = resample(resample(clean, SR, 8000), 8000, SR)
    narrow = resample(clean, SR, 8000)
    recordings = [(clean, SR), (short, SR), (clipped, SR), (quiet, SR), (noisy, SR), (upsampled, SR), (narrow, 8000)]
    report = check_enrolment(recordings, SR)
    assert checks_of(report) == [
        ("speech", 1),
        ("clipping", 2),
        ("level", 3),
        ("snr", 4),
        ("bandwidth", 5),
        ("bandwidth", 6),
    ]
    messages = {(i.check, i.recording): i.message for i in report.issues}
    assert "looks upsampled from 8000 Hz" in messages[("bandwidth", 5)]
    assert "8000 Hz, below the model's 16000 Hz" in messages[("bandwidth", 6)]
    assert "dBFS" in messages[("level", 3)] and "clipped" in messages[("clipping", 2)]
    assert report.ok and len(report.warnings) == 6  # default policy: warn


def test_agreement_flags_the_recording_of_another_speaker() -> None:
    rng = np.random.default_rng(0)
    own = rng.standard_normal(16)
    embs = np.stack([own + 0.3 * rng.standard_normal(16) for _ in range(3)] + [rng.standard_normal(16)])
    agree = agreement_scores(embs)
    assert int(np.argmin(agree)) == 3
    waves = [(np.ones(100, "float32"), SR)] * 4
    cfg = QualityConfig(min_agreement=0.5, policy={"speech": "off", "snr": "off", "bandwidth": "off"})
    report = check_enrolment(waves, SR, embeddings=embs, config=cfg)
    assert [(i.check, i.recording) for i in report.issues if i.check == "agreement"] == [("agreement", 3)]
    assert report.agreement == pytest.approx(agree.tolist())
    with pytest.raises(ConfigError, match="one embedding per recording"):
        check_enrolment(waves, SR, embeddings=embs[:2], config=cfg)


def test_policies(takes) -> None:
    quiet = [(takes[0] * 0.001, SR)]
    with pytest.raises(EnrolmentRefused, match="very low level") as info:
        check_enrolment(quiet, SR, config=QualityConfig(policy={"level": "refuse"})).raise_if_refused("ann")
    assert "'ann'" in str(info.value) and info.value.report.failed("level")
    assert isinstance(info.value, AudioError)
    assert check_enrolment(quiet, SR, config=QualityConfig(policy={"level": "off"})).issues == []
    with pytest.raises(ConfigError, match="unknown check 'loudness'"):
        QualityConfig(policy={"loudness": "refuse"})
    with pytest.raises(ConfigError, match="action must be one of"):
        QualityConfig(policy={"level": "block"})
    with pytest.raises(ConfigError, match="min_speech"):
        QualityConfig(min_speech=float("nan"))


def test_analysis_rejects_bad_audio() -> None:
    with pytest.raises(AudioError, match="NaN"):
        analyse_recording(np.array([0.0, np.nan]), SR)
    with pytest.raises(AudioError, match="non-empty"):
        analyse_recording(np.zeros(0), SR)
    silent = analyse_recording(np.zeros(SR, "float32"), SR)
    assert silent["speech_seconds"] == 0.0 and silent["level_db"] == -140.0


def test_enrolment_rules() -> None:
    e = np.array([[10.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    normalised = combine_embeddings(e)
    np.testing.assert_allclose(normalised, np.ones(3) / np.sqrt(3), atol=1e-6)  # every recording counts the same
    plain = combine_embeddings(e, rule="mean")
    assert plain[0] > 0.99  # the large-norm recording dominates a plain average
    with pytest.raises(ConfigError, match="unknown enrolment rule"):
        combine_embeddings(e, rule="median")


# ------------------------------------------------------------------------------------------ with a predictor
@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from mvector.demo import tiny_checkpoint
    from mvector.inference.predictor import MVectorPredictor

    root = tmp_path_factory.mktemp("enrol")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = MVectorPredictor(tiny_checkpoint(root / "m"), audio_db_path=root / "db", use_gpu=False, threshold=0.5)
    yield p
    p.close()


def test_enrol_refuses_without_writing_and_warns_otherwise(predictor, takes) -> None:
    bad = [(takes[0], SR), (takes[2] * 0.0005, SR)]
    with pytest.raises(EnrolmentRefused, match="very low level"):
        enrol(predictor, "carol", bad, config=QualityConfig(policy={"level": "refuse"}), min_agreement=None)
    assert "carol" not in predictor.speakers()
    with pytest.warns(UserWarning, match="very low level"):
        report = enrol(predictor, "carol", bad, min_agreement=None)
    assert report.ok and predictor.db.num_utterances("carol") == 2
    report = enrol(predictor, "dave", [(takes[1], SR), (takes[3], SR)], min_agreement=-1.0)
    assert report.issues == [] and len(report.agreement) == 2


# ------------------------------------------------------------------------------------------ the database
def test_remove_one_recording_rebuilds_the_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    embs = rng.standard_normal((3, 8)).astype("float32")
    audio = [np.full(1600, 0.1 * (i + 1), "float32") for i in range(3)]
    with SpeakerDatabase(tmp_path, "fp", 8, keep_audio=True) as db:
        db.add("ann", embs, audio=audio)
        files = db.audio_files("ann")
        db.remove_utterance("ann", 1)
        assert db.num_utterances("ann") == 2
        np.testing.assert_allclose(db.utterance_embeddings("ann"), embs[[0, 2]])
        np.testing.assert_allclose(db.mean_embedding("ann"), combine_embeddings(embs[[0, 2]]), atol=1e-6)
        assert db.audio_files("ann") == [files[0], files[2]] and not files[1].exists()
        db.remove_utterance("ann", -1)
        np.testing.assert_allclose(db.mean_embedding("ann"), combine_embeddings(embs[:1]), atol=1e-6)
        with pytest.raises(SpeakerDBError, match="only this recording"):
            db.remove_utterance("ann", 0)
        with pytest.raises(SpeakerDBError, match="no recording 5"):
            db.remove_utterance("ann", 5)
        with pytest.raises(SpeakerDBError, match="unknown speaker 'bob'"):
            db.remove_utterance("bob", 0)
        assert db.num_utterances("ann") == 1
        assert db.search(embs[0])[0][0][0] == "ann"


def test_another_process_sees_the_removal(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    embs = rng.standard_normal((2, 8)).astype("float32")
    with SpeakerDatabase(tmp_path, "fp", 8) as first, SpeakerDatabase(tmp_path, "fp", 8) as second:
        first.add("ann", embs)
        assert second.search(embs[1])[0][0][1] < 0.999
        first.remove_utterance("ann", 0)
        assert second.search(embs[1])[0][0][1] == pytest.approx(1.0, abs=1e-5)  # the cached mean was refreshed


# The schema mvector wrote before the cohort table existed (schema 1 as first released), verbatim.
_OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE speakers (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, mean BLOB NOT NULL,
    n_utts INTEGER NOT NULL CHECK (n_utts >= 1), updated INTEGER NOT NULL);
CREATE INDEX speakers_updated ON speakers (updated);
CREATE TABLE utterances (id INTEGER PRIMARY KEY, speaker_id INTEGER NOT NULL REFERENCES speakers (id),
    embedding BLOB NOT NULL, audio TEXT);
CREATE INDEX utterances_speaker ON utterances (speaker_id);
CREATE TABLE removed (version INTEGER NOT NULL, speaker_id INTEGER NOT NULL);
CREATE INDEX removed_version ON removed (version);
"""


def test_a_database_written_before_the_cohort_still_opens(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    embs = rng.standard_normal((2, 8)).astype("float32")
    mean = combine_embeddings(embs)
    conn = sqlite3.connect(str(tmp_path / DB_FILENAME))
    conn.executescript(_OLD_SCHEMA)
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("schema", 1), ("model_fingerprint", "fp-old"), ("embd_dim", 8), ("version", 1), ("next_id", 2)],
    )
    conn.execute("INSERT INTO speakers VALUES (1, 'ann', ?, 2, 1)", (mean.tobytes(),))
    conn.executemany("INSERT INTO utterances (speaker_id, embedding) VALUES (1, ?)", [(e.tobytes(),) for e in embs])
    conn.commit()
    conn.close()
    with SpeakerDatabase(tmp_path, "fp-old", 8) as db:
        assert db.names() == ["ann"] and db.cohort() is None
        assert db.search(embs[0])[0][0][0] == "ann"
        db.set_cohort(rng.standard_normal((4, 8)), source="old db upgrade")
        assert db.search(embs[0], score_norm="as_norm", cohort_top_k=2)[0][0][0] == "ann"
        db.remove_utterance("ann", 0)
        assert db.rebuild() == 1
        np.testing.assert_allclose(db.mean_embedding("ann"), combine_embeddings(embs[1:]), atol=1e-6)


def test_enrol_reads_files_and_file_objects(predictor, takes, tmp_path: Path) -> None:
    from mvector.audio import save_wav

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"take{i}.wav")
        save_wav(paths[-1], takes[i + 2], SR)
    with open(paths[1], "rb") as fh:
        report = enrol(predictor, "erin", [str(paths[0]), fh], min_agreement=None)
    assert report.issues == [] and predictor.db.num_utterances("erin") == 2
    assert [round(m["duration"], 2) for m in report.measurements] == [2.5, 2.5]
    with pytest.raises(AudioError):
        enrol(predictor, "erin", [str(tmp_path / "missing.wav")])
    assert predictor.db.num_utterances("erin") == 2  # a bad file enrols nothing
