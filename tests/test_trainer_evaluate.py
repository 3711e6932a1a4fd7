"""MVectorTrainer.evaluate is the evaluation eval.py runs (mvector.evaluation.model_eval), with the trainer's lists."""

from __future__ import annotations

import json

import pytest
from model_helpers import recomputed_eer

from mvector.data.synthetic import generate_corpus
from mvector.demo import tiny_checkpoint
from mvector.errors import ConfigError
from mvector.training.trainer import MVectorTrainer


def test_trainer_evaluate_uses_its_lists_and_keeps_the_operating_point_unless_asked(tmp_path):
    test_list = generate_corpus(tmp_path / "test", num_speakers=3, utterances_per_speaker=2, max_duration=1.5)
    model = tiny_checkpoint(tmp_path / "model", threshold=0.123)
    trainer = MVectorTrainer("tdnn", use_gpu=False, overrides={"dataset_conf.test_list": str(test_list)})
    metrics = trainer.evaluate(resume_model=model)
    assert metrics["num_trials"] == 15
    assert metrics["eer"] == pytest.approx(recomputed_eer(model, test_list), abs=1e-6)  # the list's pairs, scored
    lo, hi = metrics["eer_ci95_trials"]
    assert metrics["speakers"] == 3 and lo <= metrics["eer"] <= hi and hi - lo > 0.2  # 15 trials: a wide interval
    assert json.loads((model / "evaluations" / "list.json").read_text())["eer"] == metrics["eer"]
    assert json.loads((model / "result.json").read_text())["threshold"] == 0.123  # not moved
    with pytest.raises(ConfigError, match="3 speakers"):  # too few voices to store an operating point ...
        trainer.evaluate(resume_model=model, set_threshold=True)
    assert json.loads((model / "result.json").read_text())["threshold"] == 0.123
    trainer.evaluate(resume_model=model, set_threshold=True, force=True)  # ... unless forced
    assert json.loads((model / "result.json").read_text())["threshold"] == metrics["threshold"]
