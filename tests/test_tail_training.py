"""Issue 23's retraining remedies: the large-margin fine-tuning epochs (train_conf.large_margin_*) and the
inter-top-k penalty of the margin heads (loss_conf.inter_top_k / inter_margin)."""

from __future__ import annotations

import math

import pytest
import torch
from tail_helpers import tiny_trainer

from mvector.config import load_config
from mvector.errors import ConfigError
from mvector.models.heads import build_head
from mvector.training.trainer import MVectorTrainer, StepInfo


class _Recorder:
    """A callback that records, per step, the head's margin and the crop length of the batch it trained on."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, int]] = []

    def on_step_end(self, trainer, info: StepInfo) -> None:
        self.rows.append((info.epoch, trainer.head.margin, trainer._last_batch_samples))


def _trainer(tmp_path, **overrides) -> MVectorTrainer:
    # no margin schedule unless a test gives one
    changes = {"loss_conf": {"margin": 0.2, "scale": 32.0}}
    return tiny_trainer(
        tmp_path, max_clip=2.5, conf_changes=changes, **{"dataset_conf.min_duration": 0.5, "train_conf.max_epoch": 3},
        **overrides,
    )


def _run_epochs(trainer: MVectorTrainer, epochs) -> _Recorder:
    trainer.setup_data()
    trainer.setup_model()
    trainer.setup_optimizer()
    recorder = _Recorder()
    original = trainer._step_inputs

    def spy(batch):
        out = original(batch)
        trainer._last_batch_samples = int(out[0].shape[1])
        return out

    trainer._step_inputs = spy
    for epoch in epochs:
        trainer.train_epoch(epoch, [recorder])
    return recorder


def test_the_last_epochs_train_at_the_large_margin_on_longer_crops(tmp_path):
    trainer = _trainer(
        tmp_path,
        **{
            "train_conf.large_margin_epochs": 1,
            "train_conf.large_margin": 0.45,
            "train_conf.large_margin_crop": 2.0,
        },
    )
    rows = _run_epochs(trainer, [1, 2, 3]).rows
    before = [r for r in rows if r[0] < 3]
    stage = [r for r in rows if r[0] == 3]
    assert before and stage
    assert {m for _, m, _ in before} == {0.2}
    assert {m for _, m, _ in stage} == {0.45}
    # crops: at most 1 s before (16000 samples), longer in the stage (clips are up to 2.5 s, so some reach 2 s)
    assert max(n for _, _, n in before) <= 16000
    assert max(n for _, _, n in stage) > 16000 and max(n for _, _, n in stage) <= 32000


def test_the_stage_overrides_a_margin_schedule_and_keeps_the_crop_when_none(tmp_path):
    trainer = _trainer(
        tmp_path,
        **{
            "loss_conf.margin_scheduler": {
                "initial_margin": 0.0, "final_margin": 0.2, "start_epoch": 0, "end_epoch": 2
            },
            "train_conf.large_margin_epochs": 1,
            "train_conf.large_margin": 0.4,
            "train_conf.large_margin_crop": None,
        },
    )
    rows = _run_epochs(trainer, [1, 2, 3]).rows
    assert max(m for e, m, _ in rows if e == 1) < 0.2  # the ramp still runs before the stage
    assert {m for e, m, _ in rows if e == 3} == {0.4}
    assert max(n for _, _, n in rows) <= 16000


def test_no_stage_when_the_run_is_not_longer_than_it(tmp_path, capsys):
    trainer = _trainer(tmp_path, **{"train_conf.large_margin_epochs": 3, "train_conf.large_margin": 0.5})
    assert not any(trainer.in_large_margin_stage(e) for e in (1, 2, 3))
    assert trainer.crop_seconds(3) == 1.0
    off = _trainer(tmp_path / "off", **{"train_conf.large_margin_epochs": 0})
    assert not any(off.in_large_margin_stage(e) for e in (1, 2, 3))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train_conf.large_margin_epochs", "-1", "large_margin_epochs must be >= 0"),
        ("train_conf.large_margin", "1.6", "large_margin must be in"),
        ("train_conf.large_margin", "-0.1", "large_margin must be in"),
        ("train_conf.large_margin_crop", "0.1", "large_margin_crop must be null or between"),
        ("train_conf.large_margin_crop", "1000", "large_margin_crop must be null or between"),
        ("loss_conf.inter_top_k", "-2", "inter_top_k must be an integer >= 0"),
        ("loss_conf.inter_margin", "1.5", "inter_margin must be a number in [0, 1)"),
    ],
)
def test_bad_values_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("ecapa_tdnn", {key: value})


def test_inter_top_k_is_not_for_ce():
    with pytest.raises(ConfigError, match="not to CE"):
        build_head("CE", 4, 5, inter_top_k=2)


def _hand_loss(name: str, cos: torch.Tensor, label: int, k: int, m_inter: float, margin: float, scale: float):
    """The inter-top-k loss of one row written out by hand."""
    others = [j for j in range(cos.shape[0]) if j != label]
    top = sorted(others, key=lambda j: -float(cos[j]))[:k]
    logits = []
    target = float(cos[label])
    if name == "AAM":
        t = math.cos(math.acos(target) + margin)
    else:
        t = target - margin
    for j in range(cos.shape[0]):
        c = float(cos[j])
        if j == label:
            logits.append(scale * t)
            continue
        if j in top:
            c = math.cos(max(math.acos(c) - m_inter, 0.0)) if name == "AAM" else c + m_inter
        logit = scale * c
        if name == "ARM":
            logit = max(logit, scale * t)
        logits.append(logit)
    z = torch.tensor(logits, dtype=torch.float64)
    return float(torch.logsumexp(z, 0) - z[label])


@pytest.mark.parametrize("name", ["AAM", "AM", "ARM"])
def test_inter_top_k_penalises_exactly_the_nearest_non_target_classes(name):
    torch.manual_seed(3)
    head = build_head(name, 6, 7, margin=0.2, scale=10.0, inter_top_k=2, inter_margin=0.15)
    plain = build_head(name, 6, 7, margin=0.2, scale=10.0)
    plain.load_state_dict(head.state_dict())
    x = torch.randn(5, 6)
    y = torch.tensor([0, 3, 6, 2, 2])
    loss, logits = head(x, y)
    loss_plain, logits_plain = plain(x, y)
    assert torch.allclose(logits, logits_plain)  # accuracy logits carry no margin and no penalty
    assert loss.item() > loss_plain.item()
    cos = head.cosine(x).detach().double()
    expected = sum(_hand_loss(name, cos[i], int(y[i]), 2, 0.15, 0.2, 10.0) for i in range(5)) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # the gradient reaches the penalised classes
    head.zero_grad()
    loss.backward()
    assert head.weight.grad.abs().sum() > 0


def test_inter_top_k_larger_than_the_classes_penalises_every_non_target():
    torch.manual_seed(0)
    head = build_head("AM", 4, 3, margin=0.1, scale=8.0, inter_top_k=10, inter_margin=0.05)
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    cos = head.cosine(x).detach().double()
    expected = sum(_hand_loss("AM", cos[i], int(y[i]), 2, 0.05, 0.1, 8.0) for i in range(2)) / 2
    assert head(x, y)[0].item() == pytest.approx(expected, rel=1e-4)


def test_every_benchmark_recipe_is_a_valid_config():
    """bench_accuracy's named recipes (the t23_* rows of docs/accuracy.md among them) load and validate."""
    import sys
    from pathlib import Path

    from mvector.audio.augment import load_augmentation_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_accuracy
    finally:
        sys.path.pop(0)
    for name, recipe in bench_accuracy.RECIPES.items():
        conf = load_config(bench_accuracy.recipe_config(recipe))
        augment = bench_accuracy.recipe_augmentation(recipe)
        if augment:
            load_augmentation_config(augment)
        if name.startswith(("seed_", "v0_", "v1_", "v2_", "v3_")) or name == "seed_like":
            assert conf["score_norm_conf"]["cohort"] == "none", name  # the seed's scoring: plain cosine
    base = load_config(bench_accuracy.recipe_config(bench_accuracy.RECIPES["t23_base"]))
    assert base["score_norm_conf"]["cohort_speeds"] == [1.0]
    lm = load_config(bench_accuracy.recipe_config(bench_accuracy.RECIPES["t23_lm"]))["train_conf"]
    assert (lm["large_margin_epochs"], lm["large_margin"], lm["large_margin_crop"]) == (1, 0.4, 5.0)
