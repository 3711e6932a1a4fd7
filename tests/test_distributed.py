"""Distributed set-up (mvector.training.distributed): ranks that wait say so, and the timeout is a config key."""

from __future__ import annotations

import torch


def test_waiting_ranks_log_a_heartbeat_and_the_timeout_is_a_key(capsys):
    import time

    from mvector.config import load_config
    from mvector.training.distributed import DistContext

    conf = load_config("ecapa_tdnn", {"train_conf.dist_timeout_minutes": "5"})
    assert conf["train_conf"]["dist_timeout_minutes"] == 5

    class Work:
        def __init__(self):
            self.start = time.monotonic()

        def is_completed(self):
            return time.monotonic() - self.start > 0.2

        def wait(self):
            return True

    DistContext(1, 1, 2, torch.device("cpu"), heartbeat_seconds=0.05, timeout_minutes=5).wait(Work(), "epoch 3")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "still waiting" in ln]
    assert len(lines) >= 2 and "rank 1" in lines[0] and "epoch 3" in lines[0] and "timeout 5 min" in lines[0]
