"""MVectorPredictor: every input type, batching, thresholds, configs, export folders, enrolment round trips,
crash safety at the predictor level, folder import, and microphone capture without PyAudio."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch

from mvector.audio import save_wav
from mvector.build import model_from_checkpoint
from mvector.data.synthetic import generate_corpus, make_voices, synthesize_utterance
from mvector.demo import tiny_checkpoint
from mvector.errors import AudioError, CheckpointError, ConfigError, MVectorError, SpeakerDBError
from mvector.export import export_checkpoint
from mvector.inference.predictor import DEFAULT_THRESHOLD, MVectorPredictor, iter_audio_files
from mvector.inference.speaker_db import DB_FILENAME

REPO = Path(__file__).resolve().parents[1]
SR = 16000


VOICES = make_voices(2, seed=7)


@functools.cache
def speech(seed: int, seconds: float = 0.7, voice: int = 0) -> np.ndarray:
    """A synthetic utterance, quantised to 16 bits so that a WAV file of it holds exactly the same samples."""
    wave = synthesize_utterance(VOICES[voice], seconds, SR, rng=np.random.default_rng(seed))
    wave = (np.round(wave * 32767) / 32768).astype(np.float32)
    wave.flags.writeable = False  # shared between tests through the cache
    return wave


def wav_file(path: Path, wave: np.ndarray, rate: int = SR) -> Path:
    save_wav(path, wave, rate)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A small ECAPA-TDNN trained (2 epochs) and evaluated on 6 synthetic speakers; result.json holds its threshold."""
    from mvector.training.trainer import MVectorTrainer

    root = tmp_path_factory.mktemp("trained")
    train = generate_corpus(root / "train", 6, 6, seed=0, min_duration=1.0, max_duration=1.4)
    test = generate_corpus(root / "test", 3, 3, seed=1, min_duration=1.0, max_duration=1.4)
    overrides = {
        "dataset_conf.train_list": str(train),
        "dataset_conf.test_list": str(test),
        "dataset_conf.batch_size": 8,
        "dataset_conf.num_workers": 0,
        "dataset_conf.max_duration": 1.2,
        "dataset_conf.min_duration": 0.3,
        "dataset_conf.eval_batch_size": 8,
        "feature_conf.n_mels": 40,
        "model_conf.channels": 32,
        "model_conf.embd_dim": 24,
        "train_conf.max_epoch": 2,
        "train_conf.log_backend": "none",
        "train_conf.eval_interval": 0,  # evaluate once, after the last epoch
        "loss_conf.margin_scheduler.end_epoch": 1,
        "optimizer_conf.warmup_epochs": 0,
        "optimizer_conf.learning_rate": 0.005,
    }
    torch.manual_seed(0)
    trainer = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides=overrides)
    with contextlib.redirect_stdout(io.StringIO()):
        result = trainer.train(save_model_path=root / "models")
    return {"model": Path(result["model_dir"]) / "best_model", "corpus": root / "train", "root": root}


def utt(trained: dict, speaker: int, k: int) -> Path:
    return trained["corpus"] / f"spk{speaker:03d}" / f"spk{speaker:03d}_{k:03d}.wav"


# ------------------------------------------------------------------------------------------------ embeddings


def test_every_input_type_gives_the_same_embedding(tiny, tmp_path):
    p = MVectorPredictor(tiny, audio_db_path=tmp_path / "db", use_gpu=False)
    wave = speech(1)
    path = wav_file(tmp_path / "clip.wav", wave)
    data = path.read_bytes()
    ref = p.embed(str(path))
    assert ref.shape == (p.embd_dim,) and ref.dtype == np.float32 and np.abs(ref).max() > 0
    with open(path, "rb") as fh:
        from_handle = p.embed(fh)
    same = {
        "Path": p.embed(path),
        "bytes": p.embed(data),
        "BytesIO": p.embed(io.BytesIO(data)),
        "file object": from_handle,
        "(array, rate)": p.embed((wave, SR)),
        "array + sample_rate": p.embed(wave, sample_rate=SR),
        "int16 array": p.embed((np.round(wave * 32768).astype(np.int16), SR)),
        "torch tensor": p.embed((torch.tensor(wave), SR)),
        "stereo [T, 2]": p.embed((np.stack([wave, wave], axis=1), SR)),
        "stereo [2, T]": p.embed((np.stack([wave, wave]), SR)),
    }
    for what, emb in same.items():
        np.testing.assert_allclose(emb, ref, atol=1e-6, err_msg=what)
    # Another rate is resampled (soxr), so the samples differ slightly but the embedding hardly at all.
    for rate in (8000, 44100):
        other = p.embed((soxr.resample(wave, SR, rate), rate))
        assert p.similarity(other, ref) > 0.98, rate
    stereo_file = tmp_path / "stereo48k.wav"
    soundfile.write(stereo_file, np.stack([wave, wave], 1).repeat(3, axis=0), 48000)  # 48 kHz stereo file
    assert p.similarity(p.embed(stereo_file), ref) > 0.95


def test_bad_inputs_are_clear_errors(tiny, tmp_path):
    p = MVectorPredictor(tiny, audio_db_path=tmp_path / "db", use_gpu=False)
    with pytest.raises(AudioError, match="missing.wav: file not found"):
        p.embed(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="needs source_sample_rate"):
        p.embed(np.zeros(1000, np.float32))
    with pytest.raises(AudioError, match="cannot decode"):
        p.embed(b"not audio at all")
    with pytest.raises(AudioError, match="tuple"):
        p.embed((np.zeros(10), SR, 1))
    with pytest.raises(AudioError, match="empty"):
        p.embed((np.zeros(0, np.float32), SR))
    with pytest.raises(ConfigError, match="batch_size"):
        p.embed_batch([(speech(1), SR)], batch_size=0)


def test_embed_batch_matches_one_at_a_time(tiny):
    p = MVectorPredictor(tiny, use_gpu=False)
    clips = [(speech(seed, seconds), SR) for seed, seconds in enumerate((0.5, 1.1, 0.7, 0.9, 0.6))]
    single = np.stack([p.embed(c) for c in clips])
    for batch_size in (2, 32):
        batch = p.embed_batch(clips, batch_size=batch_size)
        assert batch.shape == (5, p.embd_dim)
        np.testing.assert_allclose(batch, single, atol=1e-4)
    assert not np.allclose(single[0], single[1], atol=1e-5)  # different clips, different embeddings
    assert p.embed_batch([]).shape == (0, p.embd_dim)


def test_long_recordings_are_capped_like_evaluation(tiny):
    p = MVectorPredictor(tiny, use_gpu=False)
    p.max_duration = 0.5
    wave = speech(3, 0.9)
    np.testing.assert_allclose(p.embed((wave, SR)), p.embed((wave[: SR // 2], SR)), atol=1e-5)


# ------------------------------------------------------------------------------------------------ loading


def test_threshold_from_result_json_and_overrides(tiny, tmp_path):
    p = MVectorPredictor(tiny, use_gpu=False)
    assert p.threshold == 0.5  # tiny_checkpoint writes result.json {"threshold": 0.5}
    wave = (speech(2), SR)
    score, same = p.contrast(wave, wave)
    assert score == pytest.approx(1.0, abs=1e-5) and same
    assert p.contrast(wave, wave, threshold=1.01) == (pytest.approx(score), False)
    assert MVectorPredictor(tiny, use_gpu=False, threshold=1.01).contrast(wave, wave)[1] is False
    other = tiny_checkpoint(tmp_path / "noeval")
    (other / "result.json").unlink()
    with pytest.warns(UserWarning, match="no calibration .* no evaluation threshold .*mvector calibrate"):
        assert MVectorPredictor(other, use_gpu=False).threshold == DEFAULT_THRESHOLD
    with pytest.raises(ConfigError, match="finite"):
        MVectorPredictor(tiny, use_gpu=False, threshold=float("nan"))


def test_stored_config_is_used_and_a_conflicting_one_refused(tiny):
    p = MVectorPredictor(tiny, use_gpu=False)
    assert p.configs["use_model"] == "TDNN" and p.configs["feature_conf"]["num_mel_bins"] == 40
    same = MVectorPredictor(tiny, configs=dict(p.configs), use_gpu=False)  # the same config is fine
    assert same.embd_dim == p.embd_dim
    with pytest.raises(ConfigError, match=r"conflicts.*use_model: 'TDNN' vs 'EcapaTdnn'"):
        MVectorPredictor(tiny, configs="ecapa_tdnn", use_gpu=False)
    changed = json.loads(json.dumps(p.configs))
    changed["dataset_conf"]["use_dB_normalization"] = False
    with pytest.raises(ConfigError, match="dataset_conf.use_dB_normalization"):
        MVectorPredictor(tiny, configs=changed, use_gpu=False)


def test_embd_dim_comes_from_the_model(trained):
    p = MVectorPredictor(trained["model"], audio_db_path=trained["root"] / "dim_db", use_gpu=False)
    assert p.embd_dim == 24 == p.embed(utt(trained, 0, 0)).shape[0]  # not the config default of 192
    model, conf, fingerprint = model_from_checkpoint(trained["model"])
    assert model.embd_dim == 24 and conf["use_model"] == "EcapaTdnn" and fingerprint == p.fingerprint


def test_model_folder_errors(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        MVectorPredictor(tmp_path / "nope", use_gpu=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no model.pt, model.onnx or model.ts"):
        MVectorPredictor(tmp_path / "empty", use_gpu=False)
    with pytest.raises(ConfigError, match="backend must be one of"):
        MVectorPredictor(tiny, backend="tensorflow", use_gpu=False)
    with pytest.raises(CheckpointError, match="no model.onnx for backend 'onnx'"):
        MVectorPredictor(tiny, backend="onnx", use_gpu=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            MVectorPredictor(tiny, use_gpu=True)
    # The trainer's model folder (parent of best_model) means its best model.
    assert MVectorPredictor(tiny.parent, use_gpu=False).model_path == tiny
    damaged = tiny_checkpoint(tmp_path / "damaged")
    (damaged / "model.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.pt"):
        MVectorPredictor(damaged, use_gpu=False)


# ------------------------------------------------------------------------------------------------ export


def test_export_folder_matches_the_checkpoint(trained, tmp_path):
    out = export_checkpoint(trained["model"], tmp_path / "export", example_seconds=0.6)
    # the default recipe stores its AS-norm cohort with the weights; the export carries it (same score scale)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.yml", "meta.json", "model.onnx", "model.ts", "score_norm.npz"]
    meta = json.loads((out / "meta.json").read_text())
    result = json.loads((trained["model"] / "result.json").read_text())
    assert (out / "config.yml").read_bytes() == (trained["model"] / "config.yml").read_bytes()
    ckpt = MVectorPredictor(trained["model"], audio_db_path=tmp_path / "db", use_gpu=False)
    assert meta["fingerprint"] == ckpt.fingerprint and meta["threshold"] == pytest.approx(result["threshold"])
    assert (meta["embd_dim"], meta["sample_rate"], meta["formats"]) == (24, SR, ["torchscript", "onnx"])
    clips = [utt(trained, s, k) for s, k in ((0, 0), (1, 1), (2, 2))]
    ref = ckpt.embed_batch(clips)
    ckpt.register("spk0", clips[0])
    ckpt.close()
    # backend="auto" prefers ONNX (a graph) to TorchScript (code)
    for backend, expected in (("auto", "onnx"), ("torchscript", "torchscript"), ("onnx", "onnx")):
        p = MVectorPredictor(out, audio_db_path=tmp_path / "db", use_gpu=False, backend=backend)
        assert p.backend == expected and p.embd_dim == 24 and p.threshold == pytest.approx(result["threshold"])
        assert p.score_type == "as_norm_model" == result["score_type"]
        np.testing.assert_allclose(p.embed_batch(clips), ref, atol=1e-4, err_msg=backend)
        np.testing.assert_allclose(p.embed(clips[1]), ref[1], atol=1e-4, err_msg=backend)
        # The database made with the checkpoint works with its export (same fingerprint).
        assert p.recognize(clips[0])[0] == "spk0"
        p.close()
    # Exporting again with one format removes the other, so the folder never mixes two exports.
    export_checkpoint(trained["model"], out, formats=["torchscript"], example_seconds=0.6)
    assert sorted(p.name for p in out.iterdir()) == ["config.yml", "meta.json", "model.ts", "score_norm.npz"]
    assert json.loads((out / "meta.json").read_text())["formats"] == ["torchscript"]
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_checkpoint(trained["model"], tmp_path / "x", formats=["tflite"])
    with pytest.raises(MVectorError, match="training checkpoint folder"):
        export_checkpoint(trained["model"], trained["model"], formats=["torchscript"])
    (out / "meta.json").unlink()  # an interrupted export is refused, not half-used
    with pytest.raises(CheckpointError, match="meta.json: missing or damaged"):
        MVectorPredictor(out, use_gpu=False)


# ------------------------------------------------------------------------------------------------ enrolment


def test_register_recognize_remove_round_trip(trained, tmp_path):
    db = tmp_path / "audio_db"
    p = MVectorPredictor(model_path=trained["model"], audio_db_path=db, use_gpu=False)
    assert p.threshold == pytest.approx(json.loads((trained["model"] / "result.json").read_text())["threshold"])
    with pytest.raises(SpeakerDBError, match="no speakers enrolled"):
        p.recognize(utt(trained, 0, 0))
    names = [f"speaker {i}" for i in range(4)]
    for i, name in enumerate(names):
        p.register(name, utt(trained, i, 0))
    assert p.speakers() == names
    def self_score(clip):  # 1.0 for cosine; on the AS-norm scale of the model's stored cohort (the default) more
        e = p.embed(clip)
        return p.pair_score(e, e)

    for i, name in enumerate(names):  # an enrolled recording (here given as bytes) is recognised as its speaker
        best = self_score(utt(trained, i, 0))
        got, score = p.recognize(utt(trained, i, 0).read_bytes(), threshold=best - 0.1)
        assert got == name and score == pytest.approx(best, abs=1e-3), (name, got, score)
    top = p.rank_speakers(utt(trained, 2, 0), top_k=3)
    assert len(top) == 3 and top[0][0] == "speaker 2" and top[0][1] >= top[1][1] >= top[2][1]
    assert len({n for n, _ in top}) == 3 and top[1][1] < top[0][1] - 1e-4
    best = self_score(utt(trained, 1, 0))
    name, score = p.recognize(utt(trained, 1, 0), threshold=best + 0.01)  # nobody scores above its own recording
    assert name is None and score == pytest.approx(best, abs=1e-3)
    # An unseen recording is given the best-scoring enrolled speaker, the same as the top-k list says.
    name, score = p.recognize(utt(trained, 3, 4), threshold=-1.0)
    assert (name, score) == p.rank_speakers(utt(trained, 3, 4), top_k=4)[0]
    # Adding recordings to a speaker keeps one speaker, with the mean over all its recordings.
    p.register("speaker 0", [utt(trained, 0, 1), (speech(5), SR)])
    assert p.speakers() == names and p.db.num_utterances("speaker 0") == 3
    emb = p.embed_batch([utt(trained, 0, 0), utt(trained, 0, 1), (speech(5), SR)])
    mean = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(p.db.mean_embedding("speaker 0"), mean / np.linalg.norm(mean), atol=1e-5)
    p.remove("speaker 1")
    assert p.speakers() == [names[0], names[2], names[3]]
    assert all(n != "speaker 1" for n, _ in p.rank_speakers(utt(trained, 1, 0), top_k=3))
    with pytest.raises(SpeakerDBError, match="unknown speaker 'speaker 1'"):
        p.remove("speaker 1")
    p.close()
    with MVectorPredictor(trained["model"], audio_db_path=db, use_gpu=False) as again:  # it persisted
        assert again.speakers() == [names[0], names[2], names[3]]
        assert again.recognize(utt(trained, 2, 0), threshold=self_score(utt(trained, 2, 0)) - 0.1)[0] == "speaker 2"
    # Another model's database is refused instead of giving meaningless scores.
    with pytest.raises(SpeakerDBError, match="another model"):
        MVectorPredictor(tiny_checkpoint(tmp_path / "other"), audio_db_path=db, use_gpu=False).speakers()


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", "x\\y", "", "  ", "bad\x00name"])
def test_path_like_names_are_rejected(tiny, tmp_path, bad):
    db = tmp_path / "db"
    p = MVectorPredictor(tiny, audio_db_path=db, use_gpu=False, keep_audio=True)
    with pytest.raises(SpeakerDBError, match="bad speaker name"):
        p.register(bad, (speech(1), SR))
    assert not (tmp_path / "evil").exists()
    assert not db.exists() or sorted(x.name for x in db.iterdir() if not x.name.startswith(DB_FILENAME)) == []


def test_register_with_a_bad_file_enrolls_nothing(tiny, tmp_path):
    p = MVectorPredictor(tiny, audio_db_path=tmp_path / "db", use_gpu=False)
    good = wav_file(tmp_path / "good.wav", speech(1))
    with pytest.raises(AudioError, match="missing.wav"):
        p.register("alice", [good, tmp_path / "missing.wav"])
    with pytest.raises(AudioError, match="no recordings"):
        p.register("alice", [])
    assert p.speakers() == []


def test_keep_audio_and_import_folder(tiny, tmp_path):
    old = tmp_path / "old_db"
    for name, voice, count in (("alice", 0, 1), ("bob", 1, 2)):
        for k in range(count):
            wav_file(old / name / f"{k}.wav", speech(1 + k, 0.7, voice))
    (old / "bob" / "broken.wav").write_bytes(b"RIFF nonsense")
    (old / "notes.txt").write_text("not a speaker")
    (old / ".cache").mkdir()
    p = MVectorPredictor(tiny, audio_db_path=tmp_path / "db", use_gpu=False, keep_audio=True)
    with pytest.warns(UserWarning, match="broken.wav"):
        assert p.import_folder(old) == {"alice": 1, "bob": 2}
    assert p.speakers() == ["alice", "bob"] and len(p.db.audio_files("bob")) == 2
    assert p.import_folder(old) == {}  # already enrolled: not twice
    assert p.import_folder() == {}  # the database's own kept audio is not enrolled again
    assert p.db.num_utterances("bob") == 2
    assert p.recognize(old / "alice" / "0.wav", threshold=0.9) == ("alice", pytest.approx(1.0, abs=1e-4))
    with pytest.raises(SpeakerDBError, match="not a folder"):
        p.import_folder(tmp_path / "nowhere")


def test_iter_audio_files(tmp_path):
    for rel in ("a/1.wav", "a/b/2.flac", "a/skip.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [p.name for p in iter_audio_files([tmp_path / "a"])] == ["1.wav", "2.flac"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioError, match="holds no audio files"):
        iter_audio_files([tmp_path / "empty"], must_exist=True)


CRASHING_REGISTER = """
    import sys, time, numpy as np
    import mvector.inference.speaker_db as sdb
    from mvector.inference.predictor import MVectorPredictor
    model, db, flag = sys.argv[1:4]
    p = MVectorPredictor(model, audio_db_path=db, use_gpu=False, keep_audio=True)
    wave = np.random.default_rng(0).standard_normal(12000).astype("float32") * 0.1
    p.register("base", (wave, 16000))
    def stall():
        open(flag, "w").close()
        time.sleep(60)
    sdb._before_commit = stall
    p.register("victim", [(wave[::-1].copy(), 16000), (wave * 0.5, 16000)])
"""


def test_crash_during_register_leaves_the_database_consistent(tiny, tmp_path):
    db, flag = tmp_path / "db", tmp_path / "inside-commit"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CRASHING_REGISTER), str(tiny), str(db), str(flag)],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():  # the child is inside register's transaction, just before COMMIT
            assert child.poll() is None, "the child exited early"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    conn = sqlite3.connect(str(db / DB_FILENAME))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = [r[0] for r in conn.execute("SELECT audio FROM utterances")]
    finally:
        conn.close()
    assert len(kept) == 1 and all((db / k).is_file() for k in kept)  # only base's recording, and its file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = MVectorPredictor(tiny, audio_db_path=db, use_gpu=False, keep_audio=True)
    assert p.speakers() == ["base"]
    p.register("after", (speech(4), SR))  # still writable
    assert p.speakers() == ["base", "after"] and p.recognize((speech(4), SR))[0] == "after"


# ------------------------------------------------------------------------------------------------ recording


def test_record_without_pyaudio_says_how_to_install(monkeypatch):
    from mvector.inference.microphone import MicrophoneUnavailable, microphone_available, record_seconds

    monkeypatch.setitem(sys.modules, "pyaudio", None)  # `import pyaudio` now raises ImportError
    with pytest.raises(MicrophoneUnavailable) as info:
        record_seconds(1.0)
    message = str(info.value)
    assert "portaudio19-dev" in message and 'pip install "mvector[mic]"' in message
    assert isinstance(info.value, MVectorError) and microphone_available() is False
    with pytest.raises(ConfigError, match="positive"):
        record_seconds(-1)


def test_record_with_a_fake_device(monkeypatch):
    from mvector.inference.microphone import MicrophoneUnavailable, record_seconds

    opened = {}

    class Stream:
        def __init__(self):
            self.t = 0

        def read(self, n, exception_on_overflow=True):
            chunk = (np.arange(self.t, self.t + n) % 100).astype(np.int16) * 100
            self.t += n
            return chunk.tobytes()

        def stop_stream(self):
            opened["stopped"] = True

        def close(self):
            opened["closed"] = True

    class PyAudio:
        def open(self, **kwargs):
            opened.update(kwargs)
            if kwargs.get("input_device_index") == 99:
                raise OSError("Invalid input device")
            return Stream()

        def terminate(self):
            opened["terminated"] = True

    fake = types.SimpleNamespace(PyAudio=PyAudio, paInt16=8)
    monkeypatch.setitem(sys.modules, "pyaudio", fake)
    samples = record_seconds(0.25, 16000)
    assert samples.shape == (4000,) and samples.dtype == np.float32
    assert samples[1] == pytest.approx(100 / 32768) and samples[101] == pytest.approx(100 / 32768)
    assert opened["rate"] == 16000 and opened["channels"] == 1 and opened["closed"] and opened["terminated"]
    with pytest.raises(MicrophoneUnavailable, match="Invalid input device"):
        record_seconds(0.1, device_index=99)


def test_contrast_and_embed_batch_name_the_short_recording(tmp_path):
    from mvector.demo import tiny_checkpoint
    from mvector.inference.predictor import MVectorPredictor

    save_wav(tmp_path / "short.wav", np.full(100, 0.1, "float32"), 16000)
    good = (np.full(16000, 0.1, "float32"), 16000)
    with MVectorPredictor(tiny_checkpoint(tmp_path / "m"), use_gpu=False) as p:
        with pytest.raises(AudioError, match=r"input 1 \(.*short\.wav\) is 100 samples"):
            p.contrast(good, tmp_path / "short.wav")
        with pytest.raises(AudioError, match=r"input 2 \(.*short\.wav\)"):
            p.embed_batch([good, good, str(tmp_path / "short.wav"), good])


def test_long_cjk_emoji_name_with_keep_audio(tmp_path):
    from mvector.demo import tiny_checkpoint
    from mvector.inference.predictor import MVectorPredictor

    name = "语音识别😀" * 20  # 100 characters, 320 bytes: longer than a file name may be
    wave = (np.random.default_rng(0).standard_normal(16000).astype("float32") * 0.1, 16000)
    with MVectorPredictor(tiny_checkpoint(tmp_path / "m"), audio_db_path=tmp_path / "db", use_gpu=False,
                          keep_audio=True) as p:
        p.register(name, wave)
        assert p.speakers() == [name]
        files = p.db.audio_files(name)
        assert len(files) == 1 and files[0].is_file() and len(files[0].parent.name.encode()) <= 255
        p.remove(name)
        assert not files[0].parent.exists()  # its kept audio goes with it


def test_all_zero_audio_warns_on_embed_and_enrol(tmp_path):
    from mvector.demo import tiny_checkpoint
    from mvector.inference.predictor import MVectorPredictor

    silent = (np.zeros(16000, "float32"), 16000)
    with MVectorPredictor(tiny_checkpoint(tmp_path / "m"), audio_db_path=tmp_path / "db", use_gpu=False) as p:
        with pytest.warns(UserWarning, match="digital silence"):
            p.embed(silent)
        with pytest.warns(UserWarning, match="digital silence"):
            p.register("alice", silent)
