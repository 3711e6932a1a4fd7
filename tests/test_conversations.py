"""Generated conversations: known turns, turn-taking rules, overlaps, files written, list-based voices."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from mvector.data.conversations import (
    ListSource,
    SyntheticSource,
    TurnPlan,
    generate_conversation,
    generate_conversations,
    write_conversation,
)
from mvector.data.rttm import read_rttm
from mvector.data.synthetic import generate_corpus
from mvector.errors import ConfigError

SR = 8000


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(float(np.mean(x.astype(np.float64) ** 2)) + 1e-20)


def test_turns_follow_the_plan_and_mark_the_speech():
    conv = generate_conversation(
        3, 12.0, seed=3, sample_rate=SR, min_turn=1.0, max_turn=2.5, min_pause=0.2, max_pause=0.6
    )
    turns = conv.turns
    assert sorted(conv.speakers) == ["spk000", "spk001", "spk002"]
    assert turns == sorted(turns) and conv.duration >= 12.0
    assert all(a.speaker != b.speaker for a, b in zip(turns, turns[1:]))
    assert all(t.end - t.start <= 2.5 + 1e-9 for t in turns)
    gaps = [b.start - a.end for a, b in zip(turns, turns[1:])]
    assert min(gaps) >= 0.2 - 1e-9  # no overlap asked for; trimmed speech can only widen a pause
    # the audio is loud inside the turns and near the noise floor between them
    inside = np.zeros(len(conv.samples), dtype=bool)
    for t in turns:
        inside[int(t.start * SR) : int(t.end * SR)] = True
    assert _rms_db(conv.samples[inside]) - _rms_db(conv.samples[~inside]) > 25.0


def test_same_seed_same_conversation_other_seed_other():
    a = generate_conversation(2, 5.0, seed=1, sample_rate=SR, max_turn=2.0)
    b = generate_conversation(2, 5.0, seed=1, sample_rate=SR, max_turn=2.0)
    c = generate_conversation(2, 5.0, seed=2, sample_rate=SR, max_turn=2.0)
    assert a.turns == b.turns and np.array_equal(a.samples, b.samples)
    assert a.turns != c.turns


def test_overlap_probability():
    plain = generate_conversation(2, 10.0, seed=0, sample_rate=SR, max_turn=2.0, overlap=0.0)
    crowded = generate_conversation(2, 10.0, seed=0, sample_rate=SR, max_turn=2.0, overlap=1.0, max_overlap=0.8)
    overlaps = [a.end - b.start for a, b in zip(crowded.turns, crowded.turns[1:]) if a.end > b.start]
    assert not any(a.end > b.start for a, b in zip(plain.turns, plain.turns[1:]))
    # every turn after the first round of speakers starts before the previous one ends, by at most 0.8 s
    assert len(overlaps) >= len(crowded.turns) - 2 and max(overlaps) <= 0.8 + 1e-6


def test_write_conversation_files_agree(tmp_path):
    wav, rttm = write_conversation(tmp_path, "meeting", 2, 6.0, seed=4, sample_rate=SR, max_turn=2.0)
    conv = generate_conversation(2, 6.0, seed=4, sample_rate=SR, max_turn=2.0)
    data, rate = soundfile.read(wav, dtype="float32")
    assert rate == SR and len(data) == len(conv.samples)
    assert np.abs(data - conv.samples).max() <= 1 / 32768 + 1e-7  # one 16-bit rounding step
    assert [(round(t.start, 3), round(t.end, 3), t.speaker) for t in read_rttm(rttm)["meeting"]] == [
        (round(t.start, 3), round(t.end, 3), t.speaker) for t in conv.turns
    ]
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_generate_many_cycles_speaker_counts(tmp_path):
    out = generate_conversations(tmp_path, 3, (2, 4), 4.0, sample_rate=SR, max_turn=1.0)
    assert [n for _, _, n in out] == [2, 4, 2]
    assert [len({t.speaker for t in read_rttm(r)[w.stem]}) for w, r, _ in out] == [2, 4, 2]


def test_list_source_uses_labelled_recordings(tmp_path):
    lst = generate_corpus(tmp_path / "corpus", num_speakers=3, utterances_per_speaker=2, sample_rate=SR,
                          min_duration=1.0, max_duration=1.5)
    src = ListSource(lst, sample_rate=SR)
    assert src.speakers() == ["spk000", "spk001", "spk002"]
    conv = generate_conversation(2, 8.0, source=src, seed=0, sample_rate=SR, min_turn=2.0, max_turn=3.0)
    assert len(conv.speakers) == 2 and set(conv.speakers) <= set(src.speakers())
    # turns longer than one recording are made of several (joined with short gaps)
    assert max(t.end - t.start for t in conv.turns) > 1.5


def test_errors():
    with pytest.raises(ConfigError, match="fewer than num_speakers"):
        generate_conversation(3, 5.0, source=SyntheticSource(2, sample_rate=SR), sample_rate=SR)
    with pytest.raises(ConfigError, match="makes 8000 Hz"):
        generate_conversation(2, 5.0, source=SyntheticSource(2, sample_rate=SR), sample_rate=16000)
    with pytest.raises(ConfigError, match="min_turn"):
        TurnPlan(min_turn=3.0, max_turn=1.0)
    with pytest.raises(ConfigError, match="plain file name"):
        write_conversation("/tmp", "../x", 2, 1.0)
    with pytest.raises(TypeError):
        generate_conversation(2, 5.0, sample_rate=SR, no_such_option=1.0)
