"""Data-list parsing and validation: path<TAB>label files and Kaldi folders."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

from mvector.data.lists import (
    MAX_REPORTED_PROBLEMS,
    Utterance,
    check_num_speakers,
    infer_num_speakers,
    load_utterances,
    read_kaldi_dir,
    read_list,
)
from mvector.errors import DataListError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture()
def audio_tree(tmp_path: Path) -> Path:
    for rel in ("audio/spk0/a.wav", "audio/spk0/b.wav", "audio/spk1/c d.wav", "audio/spk1/e.wav", "audio/spk1/f.wav"):
        touch(tmp_path / rel)
    return tmp_path


def test_relative_paths_resolve_against_the_list_folder(audio_tree: Path, tmp_path: Path, monkeypatch) -> None:
    lists = audio_tree / "lists"
    lists.mkdir()
    absolute = audio_tree / "audio" / "spk1" / "e.wav"
    (lists / "train.txt").write_text(
        f"# a comment\n\n../audio/spk0/a.wav\t0\n../audio/spk0/b.wav\t0\n../audio/spk1/c d.wav\t1\n{absolute}\t1\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    utts = read_list(audio_tree / "lists" / "train.txt")
    assert [u.path for u in utts] == [
        str(audio_tree / "audio/spk0/a.wav"),
        str(audio_tree / "audio/spk0/b.wav"),
        str(audio_tree / "audio/spk1/c d.wav"),
        str(absolute),
    ]
    assert [u.label for u in utts] == [0, 0, 1, 1]
    assert [u.line for u in utts] == [3, 4, 5, 6]
    assert all(os.path.isabs(u.path) for u in utts)
    assert infer_num_speakers(utts) == 2


def test_whitespace_separated_lines_with_spaces_in_paths(audio_tree: Path) -> None:
    lst = audio_tree / "list.txt"
    lst.write_text("audio/spk1/c d.wav 1\naudio/spk0/a.wav    0\n  \naudio/spk0/b.wav\t2\t\n", encoding="utf-8")
    utts = read_list(lst)
    assert [(Path(u.path).name, u.label) for u in utts] == [("c d.wav", 1), ("a.wav", 0), ("b.wav", 2)]


def test_utf8_bom_and_crlf_are_tolerated(audio_tree: Path) -> None:
    lst = audio_tree / "list.txt"
    lst.write_bytes("\ufeffaudio/spk0/a.wav\t0\r\naudio/spk0/b.wav\t1\r\n".encode())
    utts = read_list(lst)
    assert [(Path(u.path).name, u.label) for u in utts] == [("a.wav", 0), ("b.wav", 1)]


def test_every_problem_is_reported_once_with_line_numbers(audio_tree: Path) -> None:
    lst = audio_tree / "list.txt"
    lst.write_text(
        "\n".join(
            [
                "audio/spk0/a.wav\t0",  # 1 ok
                "audio/spk0/missing.wav\t0",  # 2 missing file
                "audio/spk0/b.wav\tbob",  # 3 non-integer label
                "audio/spk1/e.wav\t-1",  # 4 negative label
                "audio/spk0/a.wav\t0",  # 5 duplicate of line 1
                "lonelyfield",  # 6 malformed
                "audio/spk1/c d.wav\t7",  # 7 outside 0..4
                "# comment",
                "",
                "audio/spk1/f.wav\t2.5",  # 10 non-integer
            ]
        )
        + "\n"
    )
    with pytest.raises(DataListError) as info:
        read_list(lst, num_speakers=5)
    msg = str(info.value)
    assert msg.startswith(f"{lst}: 7 problems")
    assert "line 2: audio file not found" in msg and "missing.wav" in msg
    assert "line 3: label 'bob' is not an integer" in msg
    assert "line 4: label -1 is negative" in msg
    assert "line 5:" in msg and "listed twice (first on line 1)" in msg
    assert "line 6: expected 'path<TAB>label'" in msg
    assert "line 7: label 7 is outside 0..4 (num_speakers=5)" in msg
    assert "line 10: label '2.5' is not an integer" in msg
    assert "line 1:" not in msg and "line 8" not in msg
    reported = [int(n) for n in re.findall(r"^  line (\d+):", msg, flags=re.M)]
    assert reported == [2, 3, 4, 5, 6, 7, 10]  # in file order


def test_many_problems_are_truncated_with_a_count(tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"nope{i}.wav\t0\n" for i in range(25)))
    with pytest.raises(DataListError) as info:
        read_list(lst)
    msg = str(info.value)
    assert msg.count("audio file not found") == MAX_REPORTED_PROBLEMS
    assert f"... and {25 - MAX_REPORTED_PROBLEMS} more" in msg
    assert "25 problems" in msg


def test_check_files_false_skips_only_the_existence_check(tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text("x.wav\t0\ny.wav\t1\nx.wav\t1\n")
    with pytest.raises(DataListError, match=r"line 3: .*listed twice"):
        read_list(lst, check_files=False)
    lst.write_text("x.wav\t0\ny.wav\t1\n")
    assert len(read_list(lst, check_files=False)) == 2


@pytest.mark.parametrize("content", ["", "# only a comment\n\n"])
def test_empty_list_is_an_error(tmp_path: Path, content: str) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text(content)
    with pytest.raises(DataListError, match="no utterances"):
        read_list(lst)


def test_missing_or_binary_list_file(tmp_path: Path) -> None:
    with pytest.raises(DataListError, match=re.escape(str(tmp_path / "nope.txt")) + ": data list not found"):
        load_utterances(tmp_path / "nope.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(DataListError, match="not UTF-8"):
        read_list(tmp_path / "bin.txt")


def make_kaldi(folder: Path, wav_scp: str, utt2spk: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wav.scp").write_text(wav_scp)
    (folder / "utt2spk").write_text(utt2spk)
    return folder


def test_kaldi_folder_labels_follow_sorted_speakers(audio_tree: Path) -> None:
    a = audio_tree / "audio/spk0/a.wav"
    kaldi = make_kaldi(
        audio_tree / "data" / "train",
        f"u1 {a}\nu2 ../../audio/spk1/e.wav\nu3 ../../audio/spk1/c d.wav\n",
        "u1 zoe\nu2 adam\nu3 zoe\n",
    )
    utts, speakers = read_kaldi_dir(kaldi)
    assert speakers == ["adam", "zoe"]
    assert [u.label for u in utts] == [1, 0, 1]
    assert [u.line for u in utts] == [1, 2, 3]
    assert utts[1].path == str(audio_tree / "audio/spk1/e.wav")
    assert utts[2].path == str(audio_tree / "audio/spk1/c d.wav")
    # load_utterances dispatches on folder vs file
    assert load_utterances(kaldi) == utts


def test_kaldi_folder_problems(audio_tree: Path) -> None:
    a = audio_tree / "audio/spk0/a.wav"
    kaldi = make_kaldi(
        audio_tree / "k",
        f"u1 {a}\nu2 sox in.flac -t wav - |\nu3 {a}\nu1 {a}\nu4 missing.wav\nu5 {audio_tree / 'audio/spk0/b.wav'}\n",
        "u1 s1\nu2 s1\nu3 s2\nu4 s2\nu9 s3\n",
    )
    with pytest.raises(DataListError) as info:
        read_kaldi_dir(kaldi)
    msg = str(info.value)
    assert msg.startswith(str(kaldi))
    assert "wav.scp line 2: piped command" in msg
    assert "wav.scp line 3:" in msg and "listed twice (first on wav.scp line 1)" in msg
    assert "wav.scp line 4: utterance id 'u1' appears twice" in msg
    assert "wav.scp line 5: audio file not found" in msg
    assert "wav.scp line 6: utterance 'u5' has no speaker in utt2spk" in msg
    assert "utt2spk line 5: utterance 'u9' is not in wav.scp" in msg


def test_kaldi_speaker_count_and_missing_files(tmp_path: Path) -> None:
    a = touch(tmp_path / "a.wav")
    kaldi = make_kaldi(tmp_path / "k", f"u1 {a}\n", "u1 s1\n")
    (kaldi / "utt2spk").unlink()
    with pytest.raises(DataListError, match="utt2spk: missing"):
        read_kaldi_dir(kaldi)
    b = touch(tmp_path / "b.wav")
    kaldi = make_kaldi(tmp_path / "k2", f"u1 {a}\nu2 {b}\n", "u1 s1\nu2 s2\n")
    with pytest.raises(DataListError, match="2 speakers in utt2spk but num_speakers is 1"):
        read_kaldi_dir(kaldi, num_speakers=1)


def test_check_num_speakers() -> None:
    utts = [Utterance("/a.wav", 0, 1), Utterance("/b.wav", 3, 9), Utterance("/c.wav", 1, 4)]
    with pytest.raises(DataListError, match=r"num_speakers is 3 but the list has label 3 \(line 9\)"):
        check_num_speakers(utts, 3)
    with pytest.warns(UserWarning, match="1 labels have no utterance"):
        assert check_num_speakers(utts, 4) == [2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_num_speakers(utts[:1] + utts[2:], 2) == []
    with pytest.raises(DataListError):
        check_num_speakers(utts, 0)
    with pytest.raises(DataListError):
        infer_num_speakers([])
