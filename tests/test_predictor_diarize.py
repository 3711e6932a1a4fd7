"""MVectorPredictor.diarize: the library's diarization from Python, with names from the predictor's database."""

from __future__ import annotations

from mvector.data.conversations import generate_conversation
from mvector.demo import tiny_checkpoint
from mvector.predictor import MVectorPredictor


def test_predictor_diarize_returns_overlap_free_turns_and_writes_rttm(tmp_path):
    predictor = MVectorPredictor(tiny_checkpoint(tmp_path / "model"), audio_db_path=tmp_path / "db", use_gpu=False)
    conversation = generate_conversation(2, 10.0, seed=1, max_turn=3.0)
    result = predictor.diarize((conversation.samples, 16000), num_speakers=2)
    assert result.turns and all(t.end > t.start for t in result.turns)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(result.turns, result.turns[1:]))  # overlap-free, in order
    assert {t.speaker for t in result.turns} <= {"speaker_0", "speaker_1"}
    result.save(tmp_path / "out", "conv")
    lines = (tmp_path / "out" / "conv.rttm").read_text().splitlines()
    assert len(lines) == len(result.turns) and all(line.startswith("SPEAKER conv 1 ") for line in lines)
