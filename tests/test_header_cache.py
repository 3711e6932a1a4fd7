"""The training list read once (mvector/data/header_cache.py), the compact UtteranceTable, the fast WAV header."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

from mvector.audio import audio_duration, save_wav
from mvector.audio.wav_header import wav_duration
from mvector.data import header_cache
from mvector.data.dataset import TrainDataset, header_durations
from mvector.data.header_cache import cache_paths, indexed_utterances, read_index
from mvector.data.lists import Utterance, read_list
from mvector.data.table import UtteranceTable
from mvector.errors import DataListError


@pytest.fixture()
def corpus(tmp_path: Path, monkeypatch) -> Path:
    """Six WAVs of 0.3 .. 1.3 s, a list over them (labels 0..2), the user cache in tmp_path."""
    monkeypatch.setenv(header_cache.CACHE_ENV, str(tmp_path / "user_cache"))
    folder = tmp_path / "data"
    folder.mkdir()
    lines = []
    for i in range(6):
        save_wav(folder / f"u{i}.wav", np.zeros(int(16000 * (0.3 + 0.2 * i)), np.float32), 16000)
        lines.append(f"u{i}.wav\t{i % 3}")
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    return folder / "train.txt"


def _no_reading(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the list was read again")

    monkeypatch.setattr(header_cache, "load_utterances", fail)
    monkeypatch.setattr(header_cache, "header_durations", fail)


def test_cache_is_written_beside_the_list_and_used_next_time(corpus: Path, monkeypatch) -> None:
    first = indexed_utterances(corpus)
    beside = corpus.with_name(".train.txt.mvector-index.npz")
    assert cache_paths(corpus)[0] == beside and beside.is_file()
    assert [u.path for u in first] == [u.path for u in read_list(corpus)]
    assert first.durations.tolist() == pytest.approx([0.3, 0.5, 0.7, 0.9, 1.1, 1.3])
    _no_reading(monkeypatch)
    again = indexed_utterances(corpus)
    assert list(again) == list(first) and again.durations.tolist() == first.durations.tolist()


def test_a_changed_list_is_read_again_even_with_the_same_size_and_time(corpus: Path) -> None:
    indexed_utterances(corpus)
    stat = corpus.stat()
    text = corpus.read_text().replace("u5.wav\t2", "u5.wav\t1")  # same size
    corpus.write_text(text)
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same modification time
    assert read_index(corpus) is None
    assert indexed_utterances(corpus).labels.tolist() == [0, 1, 2, 0, 1, 1]
    with corpus.open("a") as fh:  # a new line: bigger, newer
        fh.write("u0.wav\t0\n")
    with pytest.raises(DataListError, match="listed twice"):
        indexed_utterances(corpus)


def test_a_damaged_cache_is_ignored_and_rewritten(corpus: Path) -> None:
    indexed_utterances(corpus)
    beside = cache_paths(corpus)[0]
    beside.write_bytes(b"PK\x03\x04 not really a zip")
    assert read_index(corpus) is None
    assert len(indexed_utterances(corpus)) == 6
    assert read_index(corpus) is not None


def test_read_only_folder_falls_back_to_the_user_cache(corpus: Path, monkeypatch) -> None:
    real = header_cache.atomic_write_bytes
    beside, user = cache_paths(corpus)

    def read_only_beside(path, data):
        if Path(path).parent == corpus.parent:
            raise PermissionError(13, "Permission denied")
        return real(path, data)

    monkeypatch.setattr(header_cache, "atomic_write_bytes", read_only_beside)
    indexed_utterances(corpus)
    assert not beside.exists() and user.is_file() and user.parent == corpus.parent.parent / "user_cache"
    _no_reading(monkeypatch)
    assert len(indexed_utterances(corpus)) == 6


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_folder(corpus: Path) -> None:
    corpus.parent.chmod(0o555)
    try:
        indexed_utterances(corpus)
        assert cache_paths(corpus)[1].is_file()
    finally:
        corpus.parent.chmod(0o755)


def test_nothing_writable_warns_and_still_reads(corpus: Path, monkeypatch) -> None:
    def nowhere(path, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(header_cache, "atomic_write_bytes", nowhere)
    with pytest.warns(UserWarning, match="cannot cache the checked list"):
        table = indexed_utterances(corpus)
    assert len(table) == 6


def test_cache_off_writes_nothing(corpus: Path, monkeypatch) -> None:
    monkeypatch.setenv(header_cache.CACHE_ENV, "off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(indexed_utterances(corpus)) == 6
    assert sorted(p.name for p in corpus.parent.iterdir() if p.name.startswith("."))  == []


def test_without_durations_first_then_with_them(corpus: Path, monkeypatch) -> None:
    assert indexed_utterances(corpus, with_durations=False).durations is None
    assert indexed_utterances(corpus).durations is not None  # scanned now, cache rewritten
    _no_reading(monkeypatch)
    assert indexed_utterances(corpus, with_durations=False).durations is not None


def test_kaldi_folder_is_cached_inside_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(header_cache.CACHE_ENV, str(tmp_path / "user_cache"))
    save_wav(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    save_wav(tmp_path / "b.wav", np.zeros(16000, np.float32), 16000)
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"u1 {tmp_path / 'a.wav'}\nu2 {tmp_path / 'b.wav'}\n")
    (kaldi / "utt2spk").write_text("u1 bob\nu2 alice\n")
    table = indexed_utterances(kaldi)
    assert (kaldi / ".mvector-index.npz").is_file() and table.labels.tolist() == [1, 0]
    (kaldi / "utt2spk").write_text("u1 alice\nu2 bob\n")  # the speakers file counts too
    assert indexed_utterances(kaldi).labels.tolist() == [0, 1]


def test_missing_list_is_the_usual_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataListError, match="not found"):
        indexed_utterances(tmp_path / "nope.txt")


def test_table_is_compact_and_behaves_like_the_utterances() -> None:
    utts = [Utterance(f"/data/spk{i % 7}/utt_{i:06d}.wav", i % 7, i + 1) for i in range(5000)]
    table = UtteranceTable.from_utterances(utts, [1.0] * 4999 + [None])
    assert len(table) == 5000 and table[3] == utts[3] and table[-1] == utts[-1] and list(table) == utts
    assert np.isnan(table.durations[-1]) and table.durations[0] == 1.0
    picked = table.subset([10, 2])
    assert list(picked) == [utts[10], utts[2]] and list(table[1:3]) == utts[1:3]
    assert table.nbytes() < 5000 * (40 + 32)  # 40 bytes + the path (~28 bytes) per utterance
    with pytest.raises(IndexError):
        table[5000]


def test_train_dataset_uses_known_durations_without_reading_headers(corpus: Path, monkeypatch) -> None:
    table = indexed_utterances(corpus)
    import mvector.data.dataset as dataset

    monkeypatch.setattr(dataset, "header_durations", lambda *a, **k: pytest.fail("headers read again"))
    ds = TrainDataset(table, max_duration=1.0, min_duration=0.6)
    assert ds.num_filtered_short == 2 and len(ds) == 4 and ds.utterances[0].path.endswith("u2.wav")
    wave, label = ds[0]
    assert label == 2 and wave.shape == (int(0.7 * 16000),)


def test_train_dataset_counts_unreadable_files(corpus: Path) -> None:
    utts = read_list(corpus) + [Utterance(str(corpus.parent / "gone.wav"), 0, 9)]
    ds = TrainDataset(utts, max_duration=1.0, min_duration=0.4)
    assert (ds.num_unreadable, ds.num_filtered_short, len(ds)) == (1, 1, 5)
    assert ds.unreadable == [str(corpus.parent / "gone.wav")]


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW", "PCM_U8"])
def test_wav_header_matches_libsndfile(tmp_path: Path, subtype: str) -> None:
    path = tmp_path / "x.wav"
    soundfile.write(path, np.zeros((12345, 2), np.float32), 22050, subtype=subtype)
    assert wav_duration(path) == audio_duration(path)


def test_wav_header_leaves_the_rest_to_the_decoder(tmp_path: Path) -> None:
    wave = np.zeros((8000, 3), np.float32)  # three channels: WAVE_FORMAT_EXTENSIBLE
    soundfile.write(tmp_path / "ext.wav", wave, 16000, subtype="PCM_16")
    assert wav_duration(tmp_path / "ext.wav") == 0.5
    data = (tmp_path / "ext.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])  # truncated: what the file holds
    assert wav_duration(tmp_path / "cut.wav") == audio_duration(tmp_path / "cut.wav")
    soundfile.write(tmp_path / "a.flac", wave, 16000)
    soundfile.write(tmp_path / "r.wav", wave, 16000, format="RF64")
    soundfile.write(tmp_path / "adpcm.wav", wave[:, 0], 16000, subtype="IMA_ADPCM")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt \x02\x00\x00\x00")
    for name in ("a.flac", "r.wav", "adpcm.wav", "junk.wav", "missing.wav"):
        assert wav_duration(tmp_path / name) is None, name
    got = header_durations([str(tmp_path / n) for n in ("ext.wav", "a.flac", "r.wav", "adpcm.wav", "junk.wav")])
    assert got[:3] == [0.5, 0.5, 0.5] and got[3] == pytest.approx(0.5, abs=0.01) and got[4] is None


def test_trainer_ranks_share_one_reading(monkeypatch) -> None:
    """Rank 0 reads (and caches) the list before the barrier; the other ranks read after it, from the cache."""
    import mvector.training.trainer as trainer_module

    events: list[str] = []

    def reading(*args, **kwargs):
        events.append("read")
        return "table"

    monkeypatch.setattr(trainer_module, "indexed_utterances", reading)
    for rank in (0, 1):
        events.clear()
        ctx = SimpleNamespace(distributed=True, is_main=rank == 0, barrier=lambda what: events.append("barrier"))
        fake = SimpleNamespace(configs={"dataset_conf": {"train_list": "l", "num_speakers": None, "min_duration": 0.5}})
        fake.ctx = ctx
        assert trainer_module.MVectorTrainer._read_train_list(fake) == "table"
        assert events == (["read", "barrier"] if rank == 0 else ["barrier", "read"])


def test_label_checks_on_one_utterance_per_label_match_the_whole_list() -> None:
    from mvector.data.lists import check_num_speakers, infer_num_speakers

    rng = np.random.default_rng(0)
    utts = [Utterance(f"/d/{i}.wav", int(label), i + 1) for i, label in enumerate(rng.integers(0, 40, 3000))]
    utts[1234] = Utterance("/d/1234.wav", 57, 1235)
    table = UtteranceTable.from_utterances(utts)
    few = table.first_of_each_label()
    assert len(few) == len(set(table.labels.tolist())) and infer_num_speakers(few) == infer_num_speakers(utts) == 58
    with pytest.warns(UserWarning) as whole:
        check_num_speakers(utts, 60)
    with pytest.warns(UserWarning) as sample:
        assert check_num_speakers(few, 60) == check_num_speakers(utts, 60)
    assert str(whole[0].message) == str(sample[0].message)
    with pytest.raises(DataListError, match=r"label 57 \(line 1235\)"):
        check_num_speakers(few, 50)
