"""Issue 23: the AS-norm cohort with the training clips also at other speeds (score_norm_conf.cohort_speeds)."""

from __future__ import annotations

import numpy as np
import pytest
from tail_helpers import tiny_trainer

from mvector.audio import save_wav
from mvector.data.dataset import EvalDataset
from mvector.errors import ConfigError
from mvector.evaluation.evaluator import EvalSettings, Evaluator
from mvector.evaluation.score_norm import check_score_norm_conf
from mvector.training.callbacks import EvaluationCallback


def test_eval_dataset_plays_clips_at_a_speed(tmp_path):
    path = tmp_path / "a.wav"
    save_wav(path, np.sin(np.arange(16000) * 0.2).astype(np.float32), 16000)
    plain = EvalDataset([str(path)], max_duration=None)
    fast = EvalDataset([str(path)], max_duration=None, speed=1.25)
    slow = EvalDataset([str(path)], max_duration=0.5, speed=0.8)  # cut first, then slowed down
    assert plain[0][0].shape == (16000,) and fast[0][0].shape == (12800,) and slow[0][0].shape == (10000,)
    assert fast.durations() == [pytest.approx(0.8)] and slow.durations() == [pytest.approx(0.625)]
    with pytest.raises(ConfigError, match="speed must lie in"):
        EvalDataset([str(path)], speed=4.0)


def test_check_score_norm_conf_cohort_speeds():
    assert check_score_norm_conf({"cohort": "utterances"})["cohort_speeds"] == [1.0]
    assert check_score_norm_conf({"cohort": "utterances", "cohort_speeds": [1.1, 0.9, 1.0, 1.1]})[
        "cohort_speeds"
    ] == [0.9, 1.0, 1.1]
    for bad in ([], [0.1], ["fast"], 1.0):
        with pytest.raises(ConfigError, match="cohort_speeds"):
            check_score_norm_conf({"cohort": "utterances", "cohort_speeds": bad})


@pytest.mark.parametrize("cohort", ["utterances", "speakers"])
def test_the_cohort_holds_every_clip_at_every_speed(tmp_path, cohort):
    trainer = tiny_trainer(
        tmp_path, **{"score_norm_conf.cohort": cohort, "score_norm_conf.max_per_speaker": 3}
    )
    trainer.setup_data()
    trainer.setup_model()
    model = trainer.embedding_model.eval()
    evaluator = Evaluator(model, EvalSettings.from_dataset_conf(trainer.configs["dataset_conf"]), progress=False)

    def fitted(speeds):
        trainer.configs["score_norm_conf"]["cohort_speeds"] = speeds
        return EvaluationCallback.fit_score_norm(trainer, evaluator)

    plain, three = fitted([1.0]), fitted([0.9, 1.0, 1.1])
    rows = 9 if cohort == "utterances" else 3  # 3 speakers x 3 clips, or one row per speaker
    assert plain.cohort.shape[0] == rows and three.cohort.shape[0] == 3 * rows
    # the clips as recorded are among the three speeds' rows; the others differ from them
    matches = [np.isclose(three.cohort, row, atol=1e-5).all(axis=1).any() for row in plain.cohort]
    assert all(matches)
    # (an untrained model maps everything close together: the speeds' rows differ, if only a little)
    assert np.abs(three.cohort[:rows] - three.cohort[rows : 2 * rows]).max() > 1e-5
