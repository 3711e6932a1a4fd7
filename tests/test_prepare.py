"""Tests for mvector.data.corpora and create_data.py: tiny fake corpora written in tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mvector.data.corpora import prepare_corpus
from mvector.data.corpora.cnceleb import prepare_cnceleb
from mvector.data.corpora.common import (
    check_audio_file,
    generate_trial_lines,
    sample_trial_pairs,
    split_speakers,
    write_list,
    write_trials,
)
from mvector.data.corpora.folder import prepare_folder
from mvector.data.corpora.voxceleb import prepare_voxceleb
from mvector.data.corpora.zhvoice import prepare_zhvoice
from mvector.errors import ConfigError, DataListError

REPO = Path(__file__).resolve().parents[1]
HAS_MP3 = "MP3" in sf.available_formats()


def _tone(seed: int, n: int = 400) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def _write(path: Path, seed: int = 0, sr: int = 16000, n: int = 400, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), _tone(seed, n), sr, format=fmt)
    return path


def make_tree(root: Path, speakers: int = 8, per_speaker: int = 3, ext: str = "wav") -> Path:
    for s in range(speakers):
        for k in range(per_speaker):
            _write(root / f"spk{s:02d}" / f"session{k % 2}" / f"utt{k}.{ext}", seed=s * 100 + k)
    return root


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def read_list_file(path: Path) -> list[tuple[str, int]]:
    """Resolve a written list the way mvector's readers do: relative to the list folder, lexically."""
    out = []
    for line in read_lines(path):
        raw, label = line.split("\t")
        resolved = raw if os.path.isabs(raw) else os.path.normpath(os.path.join(path.parent, raw))
        out.append((resolved, int(label)))
    return out


def read_trials_file(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for line in read_lines(path):
        label, a, b = line.split(" ")
        fix = [p if os.path.isabs(p) else os.path.normpath(os.path.join(path.parent, p)) for p in (a, b)]
        out.append((int(label), fix[0], fix[1]))
    return out


def speaker_of(path: str, root: Path) -> str:
    return Path(os.path.relpath(path, root)).parts[0]


# --------------------------------------------------------------------------------------------------------
# folder corpus
# --------------------------------------------------------------------------------------------------------


def test_folder_lists_are_relative_disjoint_and_labelled_by_sorted_speaker(tmp_path):
    root = make_tree(tmp_path / "audio", speakers=10, per_speaker=3)
    out = tmp_path / "lists"
    data = prepare_folder(root, out, test_speakers=3, seed=0)
    assert (data.num_train_speakers, data.num_test_speakers) == (7, 3)
    assert (data.num_train_utterances, data.num_test_utterances) == (21, 9)
    for name in ("train_list.txt", "test_list.txt", "trials.txt"):
        assert (out / name).is_file()
    assert not (out / "skipped.txt").exists() and data.num_skipped == 0
    # audio outside the list folder is written with absolute paths (moving the list folder keeps them valid)
    assert all(os.path.isabs(line.split("\t")[0]) for line in read_lines(out / "train_list.txt"))
    rel = prepare_folder(root, tmp_path / "rel", test_speakers=3, seed=0, paths="relative")
    assert all(line.startswith("../") for line in read_lines(rel.train_list))
    train = read_list_file(out / "train_list.txt")
    test = read_list_file(out / "test_list.txt")
    assert all(os.path.isfile(p) for p, _ in train + test)
    train_spk = {speaker_of(p, root) for p, _ in train}
    test_spk = {speaker_of(p, root) for p, _ in test}
    assert not train_spk & test_spk and len(train_spk | test_spk) == 10
    # labels 0..K-1 per list, in sorted speaker-name order
    for items, names in ((train, train_spk), (test, test_spk)):
        mapping = {speaker_of(p, root): label for p, label in items}
        assert mapping == {name: i for i, name in enumerate(sorted(names))}


def test_folder_split_is_deterministic_and_seed_dependent(tmp_path):
    root = make_tree(tmp_path / "audio", speakers=12, per_speaker=2)
    a = prepare_folder(root, tmp_path / "a", seed=5)
    prepare_folder(root, tmp_path / "b", seed=5)
    for name in ("train_list.txt", "test_list.txt", "trials.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a.num_test_speakers == 2  # round(0.1 * 12) = 1, raised to the minimum of 2
    test_sets = set()
    for seed in range(6):
        prepare_folder(root, tmp_path / f"s{seed}", seed=seed)
        test_sets.add(
            frozenset(speaker_of(p, root) for p, _ in read_list_file(tmp_path / f"s{seed}" / "test_list.txt"))
        )
    assert len(test_sets) > 1


def test_folder_trials_are_balanced_correct_and_resolve(tmp_path):
    root = make_tree(tmp_path / "audio", speakers=10, per_speaker=4)
    out = tmp_path / "out"
    data = prepare_folder(root, out, test_speakers=4, seed=2)
    trials = read_trials_file(out / "trials.txt")
    targets_available = 4 * (4 * 3 // 2)
    assert data.num_trials == len(trials) == 2 * targets_available  # default: min(2 * targets, 20000)
    assert data.num_target_trials == targets_available
    test_paths = {p for p, _ in read_list_file(out / "test_list.txt")}
    seen = set()
    for label, a, b in trials:
        assert a != b and a in test_paths and b in test_paths
        assert label == int(speaker_of(a, root) == speaker_of(b, root))
        seen.add(frozenset((a, b)))
    assert len(seen) == len(trials)  # no duplicate pair


def test_num_trials_option_and_odd_count(tmp_path):
    root = make_tree(tmp_path / "audio", speakers=6, per_speaker=4)
    data = prepare_folder(root, tmp_path / "out", test_speakers=3, num_trials=7, seed=0)
    assert (data.num_trials, data.num_target_trials) == (7, 3)


def test_unreadable_and_unsupported_files_are_skipped_and_listed(tmp_path):
    root = make_tree(tmp_path / "audio", speakers=5, per_speaker=3)
    (root / "spk01" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (root / "spk02" / "clip.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A ")
    (root / "spk02" / "notes.txt").write_text("not audio")
    sf.write(str(root / "spk03" / "nan.wav"), np.full(100, np.nan, np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="2 file.s. skipped"):
        data = prepare_folder(root, out, test_speakers=2)
    skipped = dict(line.split("\t") for line in read_lines(out / "skipped.txt"))
    assert data.num_skipped == 2 and data.skipped_list == out / "skipped.txt"
    assert "unreadable" in skipped[str(root / "spk01" / "broken.wav")]
    assert "ffmpeg" in skipped[str(root / "spk02" / "clip.m4a")]
    assert data.num_train_utterances + data.num_test_utterances == 16  # the NaN file passes the header check
    with pytest.warns(UserWarning, match="3 file.s. skipped"):
        full = prepare_folder(root, out, test_speakers=2, check_audio=True)
    assert full.num_skipped == 3
    assert (
        "non-finite"
        in dict(line.split("\t") for line in read_lines(out / "skipped.txt"))[str(root / "spk03" / "nan.wav")]
    )
    # a clean re-run removes the stale skipped list
    for bad in (root / "spk01" / "broken.wav", root / "spk02" / "clip.m4a", root / "spk03" / "nan.wav"):
        bad.unlink()
    assert prepare_folder(root, out, test_speakers=2).num_skipped == 0
    assert not (out / "skipped.txt").exists()


def test_check_audio_file_reports_problems(tmp_path):
    good = _write(tmp_path / "good.flac", fmt="FLAC")
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000)
    assert check_audio_file(good) is None and check_audio_file(good, full=True) is None
    assert "empty" in check_audio_file(empty)
    assert "unreadable" in check_audio_file(tmp_path / "missing.wav")


def test_single_file_speaker_warns(tmp_path):
    root = make_tree(tmp_path / "audio", speakers=4, per_speaker=2)
    _write(root / "zz_lonely" / "only.wav")
    with pytest.warns(UserWarning, match="single file.*zz_lonely"):
        data = prepare_folder(root, tmp_path / "out", test_speakers=2, seed=0)
    assert any("zz_lonely" in w for w in data.warnings)


def test_existing_outputs_are_replaced_atomically(tmp_path):
    root = make_tree(tmp_path / "audio", speakers=4, per_speaker=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_list.txt").write_text("stale junk\n")
    prepare_folder(root, out, test_speakers=2)
    assert "stale" not in (out / "train_list.txt").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["test_list.txt", "train_list.txt", "trials.txt"]


def test_output_dir_inside_root_is_not_a_speaker(tmp_path):
    root = make_tree(tmp_path / "audio", speakers=4, per_speaker=2)
    _write(root / "lists" / "stray.wav")  # audio inside the output folder must not become a speaker
    data = prepare_folder(root, root / "lists", test_speakers=2)
    assert data.num_train_speakers + data.num_test_speakers == 4


def test_symlinked_output_dir_paths_still_resolve(tmp_path):
    root = make_tree(tmp_path / "a" / "b" / "audio", speakers=4, per_speaker=2)
    (tmp_path / "real_out").mkdir()
    link = tmp_path / "a" / "b" / "out_link"
    link.symlink_to(tmp_path / "real_out", target_is_directory=True)
    prepare_folder(root, link, test_speakers=2)
    for raw in (line.split("\t")[0] for line in read_lines(link / "train_list.txt")):
        physical = os.path.join(link, raw)
        lexical = os.path.normpath(physical)
        assert os.path.isfile(physical) and os.path.samefile(physical, lexical)


def test_folder_errors(tmp_path):
    with pytest.raises(DataListError, match="not found"):
        prepare_folder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty" / "spk").mkdir(parents=True)
    (tmp_path / "empty" / "spk" / "readme.txt").write_text("x")
    with pytest.raises(DataListError, match="no audio found"):
        prepare_folder(tmp_path / "empty", tmp_path / "out")
    root = make_tree(tmp_path / "audio", speakers=3, per_speaker=2)
    with pytest.raises(ConfigError, match="test_ratio"):
        prepare_folder(root, tmp_path / "out", test_ratio=1.5)
    with pytest.raises(ConfigError, match="test_speakers"):
        prepare_folder(root, tmp_path / "out", test_speakers=4)
    with pytest.raises(ConfigError, match="num_trials"):
        prepare_folder(root, tmp_path / "out", num_trials=-1)


# --------------------------------------------------------------------------------------------------------
# split, trial sampling, writers
# --------------------------------------------------------------------------------------------------------


def test_split_speakers_rules():
    names = [f"s{i}" for i in range(20)]
    train, test = split_speakers(names, test_ratio=0.25, seed=1)
    assert len(test) == 5 and not set(train) & set(test) and sorted(train + test) == sorted(names)
    assert split_speakers(names, test_ratio=0.25, seed=1) == (train, test)
    assert split_speakers(names, test_speakers=0)[1] == []
    assert split_speakers(["a", "b"], test_ratio=0.5)[1].__len__() == 1  # at least one training speaker kept


def test_sample_trial_pairs_enumerates_all_targets_exactly():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=60)
    all_targets = {(i, j) for i, j in combinations(range(60), 2) if labels[i] == labels[j]}
    pairs = sample_trial_pairs(labels, num_trials=2 * len(all_targets), seed=3)
    assert {(i, j) for t, i, j in pairs if t == 1} == all_targets
    assert all((labels[i] == labels[j]) == bool(t) and i < j for t, i, j in pairs)
    assert sum(1 - t for t, _, _ in pairs) == len(all_targets)
    assert pairs == sorted(pairs, key=lambda p: (p[1], p[2]))


def test_sample_trial_pairs_large_set_stays_valid():
    labels = np.repeat(np.arange(300), 10)  # 3000 utterances -> 4.5 M pairs: rejection sampling
    pairs = sample_trial_pairs(labels, num_trials=3000, seed=1)
    assert len(pairs) == 3000 and len({(i, j) for _, i, j in pairs}) == 3000
    assert sum(t for t, _, _ in pairs) == 1500
    assert all((labels[i] == labels[j]) == bool(t) and i < j for t, i, j in pairs)
    assert pairs == sample_trial_pairs(labels, num_trials=3000, seed=1)
    assert pairs != sample_trial_pairs(labels, num_trials=3000, seed=2)


def test_sample_trial_pairs_rejection_path_never_repeats_a_pair():
    labels = np.concatenate([np.zeros(2890, np.int64), np.arange(1, 11)])  # few non-target pairs, >1 M pairs
    pairs = sample_trial_pairs(labels, num_trials=20000, seed=0)
    non_target = [(i, j) for t, i, j in pairs if t == 0]
    assert len(non_target) == 10000 == len(set(non_target))
    assert all(labels[i] != labels[j] for i, j in non_target)


def test_sample_trial_pairs_caps_to_keep_balance():
    pairs = sample_trial_pairs([0, 0, 1, 2, 3], num_trials=100)  # one target pair exists
    assert sorted(t for t, _, _ in pairs) == [0, 1]
    assert sample_trial_pairs([0, 0, 0], num_trials=10) == []  # no non-target possible
    assert len(sample_trial_pairs(np.repeat(np.arange(200), 2))) == 400  # default 2 x targets


def test_generate_trial_lines_format():
    lines = generate_trial_lines(["a.wav", "b.wav", "c.wav", "d.wav"], [5, 5, 9, 9], num_trials=4, seed=0)
    assert len(lines) == 4 and all(len(line.split(" ")) == 3 for line in lines)
    assert {line for line in lines if line.startswith("1 ")} == {"1 a.wav b.wav", "1 c.wav d.wav"}
    with pytest.raises(DataListError):
        generate_trial_lines(["a.wav"], [0, 1])


def test_writers_relative_absolute_and_bad_paths(tmp_path):
    audio = tmp_path / "data" / "x.wav"
    assert write_list(tmp_path / "lists" / "l.txt", [(audio, 3)], relative=True) == 1
    assert read_lines(tmp_path / "lists" / "l.txt") == ["../data/x.wav\t3"]
    write_list(tmp_path / "lists" / "inside.txt", [(audio, 3), (tmp_path / "lists" / "y.wav", 4)])
    assert read_lines(tmp_path / "lists" / "inside.txt") == [f"{audio}\t3", "y.wav\t4"]
    write_list(tmp_path / "lists" / "abs.txt", [(audio, 3)], relative=False)
    assert read_lines(tmp_path / "lists" / "abs.txt") == [f"{audio}\t3"]
    with pytest.raises(DataListError, match="tab or newline"):
        write_list(tmp_path / "bad.txt", [(tmp_path / "a\tb.wav", 0)])
    with pytest.raises(DataListError, match="space"):
        write_trials(tmp_path / "t.txt", [(1, tmp_path / "a b.wav", audio)])
    with pytest.raises(DataListError, match="0 or 1"):
        write_trials(tmp_path / "t.txt", [(2, audio, audio)])


# --------------------------------------------------------------------------------------------------------
# zhvoice
# --------------------------------------------------------------------------------------------------------


def make_zhvoice(root: Path, speakers: int = 4, per_speaker: int = 3, sr: int = 8000) -> list[str]:
    rows = []
    for s in range(speakers):
        for k in range(per_speaker):
            rel = f"zhstcmds/P{s:05d}/P{s:05d}_{k}.mp3"
            _write(root / rel, seed=s * 10 + k, sr=sr, n=1600, fmt="MP3")
            rows.append(json.dumps({"index": rel, "speaker": f"P{s:05d}", "duration_ms": 200}))
    (root / "text").mkdir(parents=True, exist_ok=True)
    (root / "text" / "infodata.json").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return rows


@pytest.mark.skipif(not HAS_MP3, reason="libsndfile without MP3 support")
def test_zhvoice_mp3_lists(tmp_path):
    root = tmp_path / "zhvoice"
    make_zhvoice(root)
    data = prepare_zhvoice(root, tmp_path / "out", test_speakers=2, seed=0)
    assert data.num_train_utterances + data.num_test_utterances == 12
    paths = [p for p, _ in read_list_file(tmp_path / "out" / "train_list.txt")]
    assert all(p.endswith(".mp3") and os.path.isfile(p) for p in paths)
    assert {Path(p).parent.name for p in paths} <= {f"P{s:05d}" for s in range(4)}


@pytest.mark.skipif(not HAS_MP3, reason="libsndfile without MP3 support")
def test_zhvoice_convert_wav_in_parallel_keeps_mp3_and_skips_bad(tmp_path):
    root = tmp_path / "zhvoice"
    rows = make_zhvoice(root)
    (root / "zhstcmds" / "P00009").mkdir()
    (root / "zhstcmds" / "P00009" / "bad.mp3").write_bytes(b"not an mp3 at all")
    rows.append(json.dumps({"index": "zhstcmds/P00009/bad.mp3", "speaker": "P00009"}))
    rows.append(json.dumps({"index": "zhstcmds/P00009/gone.mp3", "speaker": "P00009"}))
    (root / "text" / "infodata.json").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="skipped"):
        data = prepare_zhvoice(root, tmp_path / "out", test_speakers=2, convert_wav=True, num_workers=2)
    assert data.num_skipped == 2 and data.num_train_utterances + data.num_test_utterances == 12
    listed = [p for p, _ in read_list_file(tmp_path / "out" / "train_list.txt")]
    listed += [p for p, _ in read_list_file(tmp_path / "out" / "test_list.txt")]
    assert all(p.endswith(".wav") for p in listed)
    info = sf.info(listed[0])
    assert (info.samplerate, info.channels) == (16000, 1)
    assert abs(info.frames - 3200) <= 2  # 1600 samples at 8 kHz -> 0.2 s at 16 kHz
    assert os.path.isfile(listed[0][:-4] + ".mp3")  # the original is kept
    # into a separate folder, keeping the relative layout
    with pytest.warns(UserWarning, match="skipped"):
        prepare_zhvoice(root, tmp_path / "out2", test_speakers=2, convert_wav=True, wav_dir=tmp_path / "wavs")
    assert (tmp_path / "wavs" / "zhstcmds" / "P00000" / "P00000_0.wav").is_file()


def test_zhvoice_errors(tmp_path):
    root = tmp_path / "zhvoice"
    (root / "text").mkdir(parents=True)
    with pytest.raises(DataListError, match="infodata.json not found"):
        prepare_zhvoice(root, tmp_path / "out")
    (root / "text" / "infodata.json").write_text('{"index": "a.mp3", "speaker": "x"}\n{bad json\n')
    with pytest.raises(DataListError, match=r"infodata.json:2"):
        prepare_zhvoice(root, tmp_path / "out")
    (root / "text" / "infodata.json").write_text('{"path": "a.mp3"}\n')
    with pytest.raises(DataListError, match=r"infodata.json:1.*'index'"):
        prepare_zhvoice(root, tmp_path / "out")


# --------------------------------------------------------------------------------------------------------
# CN-Celeb
# --------------------------------------------------------------------------------------------------------


def make_cnceleb(root: Path) -> None:
    dev = [f"id{i:05d}" for i in range(4)]
    for i, spk in enumerate(dev + ["id00800", "id00801", "id00900"]):
        for k in range(2):
            _write(root / "data" / spk / f"speech-01-{k:03d}.flac", seed=i * 10 + k, fmt="FLAC")
    (root / "dev").mkdir()
    (root / "dev" / "dev.lst").write_text("\n".join(dev[:3]) + "\n")  # id00003 is not a dev speaker
    lists = root / "eval" / "lists"
    lists.mkdir(parents=True)
    enroll_lines, trial_lines = [], []
    for e, spk in enumerate(("id00800", "id00801")):
        _write(root / "eval" / "enroll" / f"{spk}-enroll.flac", seed=500 + e, fmt="FLAC")
        enroll_lines.append(f"{spk}-enroll enroll/{spk}-enroll.wav")  # the lists say .wav, files are .flac
        for t in range(2):
            _write(root / "eval" / "test" / f"{spk}-singing-01-{t:03d}.flac", seed=600 + e * 10 + t, fmt="FLAC")
    for enroll_spk in ("id00800", "id00801"):
        for test_spk in ("id00800", "id00801"):
            for t in range(2):
                label = int(enroll_spk == test_spk)
                trial_lines.append(f"{enroll_spk}-enroll test/{test_spk}-singing-01-{t:03d}.wav {label}")
    (lists / "enroll.lst").write_text("\n".join(enroll_lines) + "\n")
    (lists / "trials.lst").write_text("\n".join(trial_lines) + "\n")


def test_cnceleb_official_eval(tmp_path):
    root = tmp_path / "CN-Celeb_flac"
    make_cnceleb(root)
    cn2 = tmp_path / "CN-Celeb2_flac"
    for k in range(2):
        _write(cn2 / "data" / "id10000" / f"interview-01-{k:03d}.flac", seed=k, fmt="FLAC")
    (cn2 / "spk.lst").write_text("id10000\n")
    out = tmp_path / "out"
    data = prepare_cnceleb([root, cn2], out)
    assert data.official_trials and data.num_trials == 8 and data.num_target_trials == 4
    train = read_list_file(out / "train_list.txt")
    train_spk = {Path(p).parent.name for p, _ in train}
    assert train_spk == {"id00000", "id00001", "id00002", "id10000"}  # dev.lst/spk.lst, eval speakers excluded
    test = read_list_file(out / "test_list.txt")
    assert len(test) == 6 and {label for _, label in test} == {0, 1}
    trials = read_trials_file(out / "trials.txt")
    for label, enroll, test_path in trials:
        assert enroll.endswith("-enroll.flac") and os.path.isfile(test_path)
        assert label == int(Path(enroll).name.split("-")[0] == Path(test_path).name.split("-")[0])
    sub = prepare_cnceleb(root, tmp_path / "sub", num_trials=3, seed=1)
    assert sub.num_trials == 3


def test_cnceleb_without_eval_lists_generates_trials(tmp_path):
    root = tmp_path / "cn"
    for s in range(6):
        for k in range(2):
            _write(root / "data" / f"id{s:05d}" / f"vlog-01-{k:03d}.wav", seed=s * 5 + k)
    data = prepare_cnceleb(root, tmp_path / "out", test_speakers=2)
    assert not data.official_trials and data.num_test_speakers == 2 and data.num_trials == 4
    with pytest.raises(DataListError, match="CN-Celeb data folder not found"):
        prepare_cnceleb(tmp_path / "nothing", tmp_path / "out")
    (root / "eval" / "lists").mkdir(parents=True)
    (root / "eval" / "lists" / "enroll.lst").write_text("a-enroll enroll/a-enroll.wav\n")
    (root / "eval" / "lists" / "trials.lst").write_text("a-enroll test/a-1.wav\n")
    with pytest.raises(DataListError, match=r"trials.lst:1: expected 3 fields"):
        prepare_cnceleb(root, tmp_path / "out")


# --------------------------------------------------------------------------------------------------------
# VoxCeleb
# --------------------------------------------------------------------------------------------------------


def make_voxceleb(root: Path, speakers=("id10001", "id10002", "id10003", "id10270", "id10271")) -> None:
    for s, spk in enumerate(speakers):
        for yt in ("abcDEF12345", "xyz_-987654"):
            for n in (1, 2):
                _write(root / "wav" / spk / yt / f"{n:05d}.wav", seed=s * 100 + n)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    lines = [
        "1 id10270/abcDEF12345/00001.wav id10270/xyz_-987654/00002.wav",
        "0 id10270/abcDEF12345/00001.wav id10271/abcDEF12345/00001.wav",
        "1 id10271/abcDEF12345/00001.wav id10271/abcDEF12345/00002.wav",
        "0 id10271/xyz_-987654/00001.wav id10270/abcDEF12345/00002.wav",
    ]
    (root / "meta" / "veri_test2.txt").write_text("\n".join(lines) + "\n")


def test_voxceleb_official_trials(tmp_path):
    root = tmp_path / "voxceleb1"
    make_voxceleb(root)
    out = tmp_path / "out"
    data = prepare_voxceleb(root, out, trials_file="veri_test2.txt")  # found inside root/meta
    assert data.official_trials and (data.num_trials, data.num_target_trials) == (4, 2)
    assert data.num_test_utterances == 6 and data.num_test_speakers == 2
    assert {p.split(os.sep)[-3] for p, _ in read_list_file(out / "train_list.txt")} == {"id10001", "id10002", "id10003"}
    trials = read_trials_file(out / "trials.txt")
    assert [t[0] for t in trials] == [1, 0, 1, 0]
    assert trials[0][1] == str(root / "wav" / "id10270" / "abcDEF12345" / "00001.wav")
    assert all(os.path.isabs(p) for line in read_lines(out / "trials.txt") for p in line.split(" ")[1:])


def test_voxceleb_split_without_trials_and_m4a_errors(tmp_path):
    root = tmp_path / "vox"
    make_voxceleb(root)
    data = prepare_voxceleb(root, tmp_path / "out", test_speakers=2, seed=4)
    assert not data.official_trials and data.num_train_speakers == 3 and data.num_trials == 2 * 2 * 6
    vox2 = tmp_path / "vox2" / "dev" / "aac" / "id00012" / "21Uxsk56VDQ"
    vox2.mkdir(parents=True)
    (vox2 / "00001.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A ")
    with pytest.raises(DataListError, match="m4a.*ffmpeg"):
        prepare_voxceleb(tmp_path / "vox2", tmp_path / "out2")
    with pytest.raises(DataListError, match="trials file not found"):
        prepare_voxceleb(root, tmp_path / "out3", trials_file="list_test_hard2.txt")


def test_prepare_corpus_dispatch_and_option_errors(tmp_path):
    root = make_tree(tmp_path / "audio", speakers=4, per_speaker=2)
    assert prepare_corpus("folder", root, tmp_path / "out", test_speakers=2).num_test_speakers == 2
    with pytest.raises(ConfigError, match="trials_file"):
        prepare_corpus("folder", root, tmp_path / "out", trials_file="x.txt")
    with pytest.raises(ConfigError, match="unknown corpus"):
        prepare_corpus("librispeech", root, tmp_path / "out")


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, str(REPO / "create_data.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_folder_writes_three_files(tmp_path):
    root = make_tree(tmp_path / "audio", speakers=6, per_speaker=2)
    (root / "spk00" / "broken.wav").write_bytes(b"junk")
    done = run_cli("folder", "audio", "--output_dir", "dataset", "--seed", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "speakers:   train 4, test 2" in done.stdout and "skipped:    1" in done.stdout
    assert "warning:" in done.stderr and "Traceback" not in done.stderr
    for name in ("train_list.txt", "test_list.txt", "trials.txt", "skipped.txt"):
        assert (tmp_path / "dataset" / name).is_file()
    assert all(os.path.isfile(p) for p, _ in read_list_file(tmp_path / "dataset" / "train_list.txt"))


def test_cli_errors_are_one_line(tmp_path):
    done = run_cli("folder", "missing_root", "--output_dir", "out", cwd=tmp_path)
    assert (
        done.returncode == 2
        and done.stderr.startswith("error: audio root not found")
        and "Traceback" not in done.stderr
    )
    done = run_cli("folder", ".", "--trials_file", "x.txt", cwd=tmp_path)
    assert done.returncode == 2 and "voxceleb corpus only" in done.stderr
