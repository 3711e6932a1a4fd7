"""MVectorPredictor: diarization from Python (names from the database) and identification with candidates."""

from __future__ import annotations

import inspect

from mvector.data.conversations import generate_conversation
from mvector.demo import tiny_checkpoint
from mvector.inference.predictor import MVectorPredictor


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


def test_recognize_lists_candidates_with_the_decision_from_one_search(tmp_path):
    import numpy as np

    predictor = MVectorPredictor(tiny_checkpoint(tmp_path / "model"), audio_db_path=tmp_path / "db", use_gpu=False)
    rng = np.random.default_rng(0)
    clips = {name: (rng.standard_normal(16000).astype("float32") * 0.1, 16000) for name in ("ann", "bob", "cat")}
    for name, clip in clips.items():
        predictor.register(name, clip)
    result = predictor.recognize(clips["bob"], candidates=3)
    assert result[0] == "bob" and [n for n, _ in result.candidates][0] == "bob" and len(result.candidates) == 3
    assert result.candidates == predictor.rank_speakers(clips["bob"], top_k=3)  # the same list as the ranking
    from mvector.evaluation.openset import IdentificationResult

    plain = predictor.recognize(clips["ann"])  # one return type, with or without candidates
    assert isinstance(result, IdentificationResult) and isinstance(plain, IdentificationResult)
    assert plain.candidates == [] and "top_k" not in inspect.signature(predictor.recognize).parameters
