"""The README's first command runs the embedded demo: a short version of it runs end to end, twice."""

from __future__ import annotations

import json

import pytest

from mvector.demo import run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_again_into_the_same_folder(tmp_path, capsys):
    kwargs = dict(max_epoch=1, train_speakers=4, utterances_per_speaker=3, test_speakers=3)
    first = run_demo(tmp_path, **kwargs)
    assert 0.0 <= first["trained_eer"] <= 1.0 and 0.0 <= first["untrained_eer"] <= 1.0
    assert first["num_trials"] == 3 * 8 * (3 * 8 - 1) // 2
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model_dir"] == first["model_dir"]
    second = run_demo(tmp_path, **kwargs)  # the demo owns its folder: a rerun replaces the first run
    assert second["trained_eer"] == pytest.approx(first["trained_eer"])  # and it is deterministic
