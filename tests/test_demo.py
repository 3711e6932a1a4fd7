"""The README's first command runs the embedded demo: a short version of it learns, end to end, twice."""

from __future__ import annotations

import json

import pytest

from mvector.demo import run_demo


@pytest.mark.slow
def test_demo_learns_end_to_end_and_again_into_the_same_folder(tmp_path, capsys):
    # The fixed (seeded) demo corpus: 8 training speakers x 6 utterances, 6 epochs, 4 test speakers x 8. Measured
    # on CPU, torch 2.x: untrained EER 0.348, trained 0.247. A trainer that does not learn (a frozen model, a zero
    # learning rate, labels shuffled against the audio) leaves the trained EER at the untrained one's.
    kwargs = dict(max_epoch=6, train_speakers=8, utterances_per_speaker=6, test_speakers=4)
    first = run_demo(tmp_path, **kwargs)
    assert first["trained_eer"] <= first["untrained_eer"] - 0.05, first
    assert first["num_trials"] == 4 * 8 * (4 * 8 - 1) // 2
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model_dir"] == first["model_dir"]
    second = run_demo(tmp_path, **kwargs)  # the demo owns its folder: a rerun replaces the first run
    assert second["trained_eer"] == pytest.approx(first["trained_eer"])  # and it is deterministic
