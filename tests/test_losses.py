"""Classifier heads, margin losses and the margin scheduler (mvector.models.heads).

Expected loss values are computed by hand with ``math`` from the published formulas, on tiny 2-D examples.
"""

from __future__ import annotations

import math

import pytest
import torch

from mvector.errors import ConfigError, DataListError
from mvector.models.heads import (
    AAMHead,
    AMHead,
    ARMHead,
    CEHead,
    MarginScheduler,
    build_head,
)

# Three unit class weights in 2-D and one embedding of norm 5: cosines 0.6, 0.8, -0.6.
W3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
X = torch.tensor([[3.0, 4.0]])
COS = [0.6, 0.8, -0.6]


def head_with(name: str, weight: torch.Tensor, **conf) -> torch.nn.Module:
    head = build_head(name, weight.shape[1], weight.shape[0] // conf.get("sub_centers", 1), **conf)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def ce_of(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], by hand."""
    top = max(logits)
    lse = top + math.log(sum(math.exp(v - top) for v in logits))
    return lse - logits[target]


# ---------------------------------------------------------------------------------------------- loss values


@pytest.mark.parametrize("label", [0, 1, 2])
def test_aam_loss_matches_hand_computation(label):
    s, m = 8.0, 0.2
    head = head_with("AAM", W3, margin=m, scale=s)
    loss, logits = head(X, torch.tensor([label]))
    c = COS[label]
    # Non-easy margin: cos(θ + m) where θ + m stays below π, else cos θ − m·sin m.
    target = math.cos(math.acos(c) + m) if c > math.cos(math.pi - m) else c - m * math.sin(m)
    adjusted = [s * v for v in COS]
    adjusted[label] = s * target
    assert loss.item() == pytest.approx(ce_of(adjusted, label), abs=1e-5)
    assert logits[0].tolist() == pytest.approx([s * v for v in COS], abs=1e-6)


def test_am_loss_matches_hand_computation():
    s, m = 10.0, 0.3
    head = head_with("AM", W3, margin=m, scale=s)
    loss, logits = head(X, torch.tensor([0]))
    expected = ce_of([s * (0.6 - m), s * 0.8, s * -0.6], 0)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert logits[0].tolist() == pytest.approx([6.0, 8.0, -6.0], abs=1e-5)


def test_arm_loss_matches_paper_formula():
    s, m = 10.0, 0.2
    head = head_with("ARM", W3, margin=m, scale=s)
    for label in range(3):
        loss, _ = head(X, torch.tensor([label]))
        cy = COS[label]
        expected = math.log(1 + sum(math.exp(s * max(0.0, cj - cy + m)) for j, cj in enumerate(COS) if j != label))
        assert loss.item() == pytest.approx(expected, abs=1e-5), label


def test_arm_ignores_classes_that_satisfy_the_margin():
    # Class 2 is far below the target: moving it further away must not change the ARM loss, but does change AM.
    s, m = 4.0, 0.2
    far = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.8, -0.6]])  # cos with X: 0.6, 0.8, -0.96
    arm_a, _ = head_with("ARM", W3, margin=m, scale=s)(X, torch.tensor([0]))
    arm_b, _ = head_with("ARM", far, margin=m, scale=s)(X, torch.tensor([0]))
    am_a, _ = head_with("AM", W3, margin=m, scale=s)(X, torch.tensor([0]))
    am_b, _ = head_with("AM", far, margin=m, scale=s)(X, torch.tensor([0]))
    assert arm_a.item() == pytest.approx(arm_b.item(), abs=1e-6)
    assert am_a.item() != pytest.approx(am_b.item(), abs=1e-4)
    # ... and a satisfied class gets no gradient on its weight row.
    head = head_with("ARM", W3, margin=m, scale=s)
    head(X, torch.tensor([0]))[0].backward()
    assert head.weight.grad[2].abs().max().item() == 0.0
    assert head.weight.grad[1].abs().max().item() > 0.0


def test_ce_is_a_plain_linear_softmax():
    head = head_with("CE", W3, margin=0.4, scale=64)  # margin and scale have no effect on CE
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.5, 0.0, -1.0]))
    loss, logits = head(X, torch.tensor([1]))
    lin = [3.0 + 0.5, 4.0, -3.0 - 1.0]
    assert logits[0].tolist() == pytest.approx(lin, abs=1e-5)
    assert loss.item() == pytest.approx(ce_of(lin, 1), abs=1e-5)
    head.update(0.0)
    assert head(X, torch.tensor([1]))[0].item() == pytest.approx(loss.item(), abs=1e-7)


def test_loss_is_the_batch_mean():
    s, m = 5.0, 0.25
    head = head_with("AM", W3, margin=m, scale=s)
    x = torch.tensor([[3.0, 4.0], [-1.0, 0.0]])  # second: cosines -1, 0, 1
    loss, _ = head(x, torch.tensor([0, 2]))
    first = ce_of([s * (0.6 - m), s * 0.8, s * -0.6], 0)
    second = ce_of([-s, 0.0, s * (1.0 - m)], 2)
    assert loss.item() == pytest.approx((first + second) / 2, abs=1e-5)


# ---------------------------------------------------------------------------------------------- AAM details


def test_easy_margin_behaviour():
    s, m = 4.0, 0.3
    x = torch.tensor([[-3.0, 4.0]])  # cosines -0.6, 0.8, 0.6: the target class 0 has a negative cosine
    easy = head_with("AAM", W3, margin=m, scale=s, easy_margin=True)
    hard = head_with("AAM", W3, margin=m, scale=s, easy_margin=False)
    loss_easy, _ = easy(x, torch.tensor([0]))
    loss_hard, _ = hard(x, torch.tensor([0]))
    # easy: no margin where cos θ_y <= 0; hard: cos(θ + m) since θ + m < π.
    assert loss_easy.item() == pytest.approx(ce_of([s * -0.6, s * 0.8, s * 0.6], 0), abs=1e-5)
    shifted = math.cos(math.acos(-0.6) + m)
    assert loss_hard.item() == pytest.approx(ce_of([s * shifted, s * 0.8, s * 0.6], 0), abs=1e-5)
    # Both agree where the target cosine is positive (class 1: 0.8).
    assert easy(x, torch.tensor([1]))[0].item() == pytest.approx(hard(x, torch.tensor([1]))[0].item(), abs=1e-6)


def test_aam_target_logit_is_monotonic_past_pi_minus_m():
    m = 0.5
    head = AAMHead(2, 2, margin=m, scale=1.0)
    cos = torch.linspace(-1.0, 1.0, 2001)[:, None].repeat(1, 2)
    target = head.margin_logits(cos, torch.zeros(2001, dtype=torch.long))[:, 0]
    assert bool((target[1:] - target[:-1] >= -1e-6).all())  # never increases as θ grows (cos falls)
    assert target[0].item() == pytest.approx(-1.0 - m * math.sin(m), abs=1e-5)  # linear branch at θ = π


@pytest.mark.parametrize("name, easy", [("AAM", False), ("AAM", True), ("AM", False), ("ARM", False)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("vec", [[3.0, 4.0, 0.0], [0.3, -1.2, 0.5]])  # cosine exactly ±1; ±(1 + 1.2e-7) in fp32
def test_finite_gradient_when_cosine_is_plus_minus_one(name, easy, sign, vec):
    emb = torch.tensor([vec, vec], requires_grad=True)
    head = build_head(name, 3, 2, margin=0.2, scale=32.0, easy_margin=easy)
    with torch.no_grad():
        head.weight.copy_(torch.stack([sign * emb[0], emb[0] * 0 + torch.tensor([1.0, 0.0, 0.0])]))
    loss, _ = head(emb, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert bool(torch.isfinite(emb.grad).all()) and bool(torch.isfinite(head.weight.grad).all())


def test_label_smoothing_matches_definition():
    s, m, eps = 6.0, 0.2, 0.1
    head = head_with("AM", W3, margin=m, scale=s, label_smoothing=eps)
    loss, _ = head(X, torch.tensor([0]))
    z = [s * (0.6 - m), s * 0.8, s * -0.6]
    nll = [ce_of(z, j) for j in range(3)]
    expected = (1 - eps) * nll[0] + eps * sum(nll) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    plain, _ = head_with("AM", W3, margin=m, scale=s)(X, torch.tensor([0]))
    assert loss.item() != pytest.approx(plain.item(), abs=1e-3)


@pytest.mark.parametrize("name", ["AAM", "AM", "ARM"])
def test_sub_centers_take_the_best_center(name):
    # 2 classes × 2 sub-centers; class 0's second center points at X, class 1's centers at (0, 1) and (-1, 0).
    w = torch.tensor([[-1.0, 0.0], [3.0, 4.0], [0.0, 1.0], [-1.0, 0.0]])
    head = head_with(name, w, margin=0.2, scale=10.0, sub_centers=2)
    assert tuple(head.weight.shape) == (4, 2)
    cos = head.cosine(X)
    assert cos[0].tolist() == pytest.approx([1.0, 0.8], abs=1e-6)
    loss, logits = head(X, torch.tensor([0]))
    plain = head_with(name, torch.tensor([[3.0, 4.0], [0.0, 1.0]]), margin=0.2, scale=10.0)
    ref_loss, ref_logits = plain(X, torch.tensor([0]))
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-5)
    assert logits[0].tolist() == pytest.approx(ref_logits[0].tolist(), abs=1e-5)
    loss.backward()
    assert head.weight.grad[0].abs().max().item() == 0.0  # the losing sub-center gets no gradient


# ---------------------------------------------------------------------------------------------- margin updates


def test_update_changes_the_loss():
    head = head_with("AM", W3, margin=0.1, scale=10.0)
    low, _ = head(X, torch.tensor([0]))
    head.update(0.4)
    high, _ = head(X, torch.tensor([0]))
    assert head.margin == 0.4
    assert high.item() == pytest.approx(ce_of([10 * (0.6 - 0.4), 8.0, -6.0], 0), abs=1e-5)
    assert high.item() > low.item() + 1.0
    with pytest.raises(ValueError, match="margin"):  # the head names no config key; build_head adds it
        head.update(-0.1)


def test_margin_scheduler_values():
    head = build_head("AAM", 4, 3, margin=0.2)
    sched = MarginScheduler(head, initial_margin=0.05, final_margin=0.25, start_step=100, end_step=300)
    expected = {0: 0.05, 100: 0.05, 150: 0.10, 200: 0.15, 299: 0.249, 300: 0.25, 10_000: 0.25}
    for step, value in expected.items():
        assert sched.step(step) == pytest.approx(value, abs=1e-9)
        assert head.margin == pytest.approx(value, abs=1e-9)
    # Going back (resume at an earlier step) gives that step's margin.
    assert sched.step(125) == pytest.approx(0.075)


def test_margin_scheduler_edge_cases():
    head = build_head("AM", 4, 3)
    jump = MarginScheduler(head, 0.0, 0.3, start_step=5, end_step=5)
    assert [jump.step(s) for s in (4, 5, 6)] == [0.0, 0.3, 0.3]
    with pytest.raises(ValueError, match="start_step"):
        MarginScheduler(head, 0.0, 0.3, start_step=10, end_step=5)
    with pytest.raises(ValueError, match="final_margin"):
        MarginScheduler(head, 0.0, -0.3, start_step=0, end_step=5)


# ---------------------------------------------------------------------------------------------- names, keys, labels


@pytest.mark.parametrize(
    "name, cls",
    [
        ("AAM", AAMHead),
        ("aam", AAMHead),
        ("AAMLoss", AAMHead),
        ("ArcFace", AAMHead),
        ("AM", AMHead),
        ("amloss", AMHead),
        ("CosFace", AMHead),
        ("ARM", ARMHead),
        ("ARMLoss", ARMHead),
        ("CE", CEHead),
        ("CELoss", CEHead),
    ],
)
def test_names(name, cls):
    head = build_head(name, 8, 5)
    assert type(head) is cls
    assert head.margin == pytest.approx(0.2) and head.scale == 32.0


def test_unknown_name_and_keys():
    with pytest.raises(ConfigError, match=r"unknown loss 'AAMX'.*AAM, AM, ARM, CE"):
        build_head("AAMX", 8, 5)
    with pytest.raises(ConfigError, match=r"'scal'.*did you mean 'scale'"):
        build_head("AM", 8, 5, scal=30)
    with pytest.raises(ConfigError, match="easy_margin applies to the AAM loss only"):
        build_head("AM", 8, 5, easy_margin=True)
    with pytest.raises(ConfigError, match="sub-centers"):
        build_head("CE", 8, 5, sub_centers=2)
    with pytest.raises(ConfigError, match="scale"):
        build_head("AAM", 8, 5, scale=0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        build_head("AAM", 8, 5, label_smoothing=1.5)
    with pytest.raises(ConfigError, match="num_speakers"):
        build_head("AAM", 8, 0)


@pytest.mark.parametrize("name", ["AAM", "AM", "ARM", "CE"])
def test_bundled_loss_conf_loads_for_every_loss(name):
    # The shipped configs carry margin/scale/easy_margin: false/label_smoothing; switching use_loss must work.
    head = build_head(name, 16, 4, margin=0.2, scale=32, easy_margin=False, label_smoothing=0.0)
    loss, logits = head(torch.randn(2, 16), torch.tensor([1, 3]))
    assert torch.isfinite(loss) and tuple(logits.shape) == (2, 4)


@pytest.mark.parametrize("bad", [5, -1])
def test_out_of_range_label_is_a_clear_error(bad):
    head = build_head("AAM", 4, 5)
    with pytest.raises(DataListError, match=rf"label {bad} is out of range.*num_speakers=5"):
        head(torch.randn(2, 4), torch.tensor([0, bad]))


def test_bad_shapes_are_clear_errors():
    head = build_head("AAM", 4, 5)
    with pytest.raises(ValueError, match=r"embeddings must have shape \[batch, 4\]"):
        head(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must have shape"):
        head(torch.randn(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        head(torch.randn(2, 4), torch.tensor([0.0, 1.0]))


def test_runs_in_float32_under_autocast():
    head = build_head("AAM", 8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits = head(torch.randn(4, 8).bfloat16(), torch.tensor([0, 1, 2, 0]))
    assert loss.dtype == torch.float32 and logits.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_label_check_is_deferred_but_raised():
    head = build_head("AAM", 4, 5).cuda()
    loss, _ = head(torch.randn(2, 4, device="cuda"), torch.tensor([0, 7], device="cuda"))
    assert torch.isfinite(loss)  # clamped for this step: no device-side assert
    with pytest.raises(DataListError, match="label 7 is out of range"):
        head.check_labels()
    head(torch.randn(2, 4, device="cuda"), torch.tensor([0, 9], device="cuda"))
    torch.cuda.synchronize()
    with pytest.raises(DataListError, match="label 9"):
        head(torch.randn(2, 4, device="cuda"), torch.tensor([0, 1], device="cuda"))  # next step raises


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", ["AAM", "AM", "ARM", "CE"])
def test_a_few_optimisation_steps_lower_the_loss(name):
    torch.manual_seed(0)
    emb = torch.nn.Parameter(torch.randn(12, 8))
    labels = torch.arange(12) % 4
    head = build_head(name, 8, 4, margin=0.2, scale=16.0)
    opt = torch.optim.Adam([emb, *head.parameters()], lr=0.05)
    losses = []
    for _ in range(40):
        loss, logits = head(emb, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert (logits.argmax(1) == labels).all()


def test_head_can_be_copied_and_saved(tmp_path):
    import copy

    head = build_head("AAM", 4, 3, sub_centers=2)
    clone = copy.deepcopy(head)
    assert torch.equal(clone.weight, head.weight) and clone.sub_centers == 2
    torch.save(head.state_dict(), tmp_path / "head.pt")
    fresh = build_head("AAM", 4, 3, sub_centers=2)
    fresh.load_state_dict(torch.load(tmp_path / "head.pt", weights_only=True))
    assert torch.equal(fresh.weight, head.weight)
