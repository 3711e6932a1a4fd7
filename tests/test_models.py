"""Backbones and pooling: shapes for any feature size, padding invariance, sizes, training, errors, tracing."""

from __future__ import annotations

import pytest
import torch
from model_helpers import randomise_batch_norm
from torch import nn

from mvector.errors import ConfigError
from mvector.models import BACKBONES, POOLINGS, build_backbone, build_head, build_pooling
from mvector.models.common import TimeConv

torch.set_num_threads(1)

# Reduced widths: the point of these tests is the wiring, not the default size. Every registered backbone is
# tested (parametrised over the registry); one missing here runs at its default widths.
SMALL = {
    "EcapaTdnn": {"channels": 32, "se_channels": 8, "attention_channels": 8},
    "TDNN": {"channels": 24, "stats_channels": 32, "attention_channels": 8},
    "Res2Net": {"channels": 4, "layers": (1, 1, 1, 1), "attention_channels": 8},
    "ResNetSE": {"channels": 4, "layers": (1, 1, 1, 1), "attention_channels": 8},
    "CAMPPlus": {
        "fcm_channels": 4,
        "init_channels": 16,
        "growth_rate": 8,
        "bn_size": 2,
        "num_layers": (2, 2, 2),
        "attention_channels": 8,
    },
}
POOLS = sorted(POOLINGS)


def small(name: str, input_size: int, pooling: str = "ASP", embd_dim: int = 12, **extra) -> nn.Module:
    torch.manual_seed(0)
    widths = {**SMALL.get(name, {}), **extra}
    return build_backbone(name, input_size, embd_dim=embd_dim, pooling_type=pooling, **widths)


def test_registries():
    assert {"EcapaTdnn", "TDNN", "Res2Net", "ResNetSE", "CAMPPlus"} <= set(BACKBONES)  # the built-ins
    assert set(POOLINGS) == {"ASP", "SAP", "TSP", "TAP"}


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("feat", [40, 64, 80, 513])
def test_shapes_every_pooling_and_feature_size(name, feat):
    x = torch.randn(2, 23, feat)
    for pooling in POOLS:
        model = small(name, feat, pooling).eval()
        with torch.no_grad():
            out = model(x, torch.tensor([23, 9]))
        assert out.shape == (2, 12), (name, feat, pooling)
        assert model.embd_dim == 12
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("pooling", POOLS)
def test_padding_invariance(name, pooling):
    model = randomise_batch_norm(small(name, 40, pooling))
    gen = torch.Generator().manual_seed(2)
    short = torch.randn(1, 29, 40, generator=gen)
    long = torch.randn(1, 64, 40, generator=gen)
    batch = torch.zeros(2, 64, 40)
    batch[0, :29] = short[0]
    batch[1] = long[0]
    with torch.inference_mode():
        alone = model(short)
        padded = model(batch, torch.tensor([29, 64]))
        long_alone = model(long, None)
    assert (alone[0] - padded[0]).abs().max().item() <= 1e-4
    assert (long_alone[0] - padded[1]).abs().max().item() <= 1e-4
    # Padding content does not matter either (it is zeroed, not just assumed zero).
    batch[0, 29:] = 5.0
    with torch.inference_mode():
        garbage = model(batch, torch.tensor([29, 64]))
    assert (garbage[0] - alone[0]).abs().max().item() <= 1e-4
    # And the embedding really depends on the clip (the check above is not vacuous).
    assert (alone[0] - long_alone[0]).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_lengths_none_equals_full_lengths(name):
    model = randomise_batch_norm(small(name, 64))
    x = torch.randn(3, 20, 64)
    with torch.inference_mode():
        a = model(x)
        b = model(x, torch.tensor([20, 20, 20]))
        c = model(x, torch.tensor([20.0, 20.0, 20.0]))  # float lengths are accepted
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, c, atol=1e-5)


def test_ecapa_default_parameter_count():
    model = build_backbone("EcapaTdnn", 80)
    count = sum(p.numel() for p in model.parameters())
    assert count == 6_194_432  # published: 6.2 M (Desplanques et al. 2020, C=512)
    assert abs(count - 6.19e6) / 6.19e6 < 0.005
    assert model.embd_dim == 192


def test_default_sizes_follow_input_size():
    for name in ("Res2Net", "ResNetSE"):
        a = build_backbone(name, 40, pooling_type="TAP")
        b = build_backbone(name, 80, pooling_type="TAP")
        assert b.stats_channels == 2 * a.stats_channels
        assert a.pooling.output_size == a.stats_channels
    assert build_backbone("ResNetSE", 80).stats_channels == 256 * 10
    assert build_backbone("Res2Net", 513, pooling_type="TAP").stats_channels == 512 * 65


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_training_step_lowers_loss(name):
    torch.manual_seed(3)
    model = small(name, 40, "ASP", embd_dim=16).train()
    head = nn.Linear(16, 4)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=3e-3)
    x = torch.randn(8, 30, 40)
    lengths = torch.tensor([30, 25, 20, 30, 18, 30, 22, 27])
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(head(model(x, lengths)), labels)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_unknown_names_and_keys():
    valid = "Valid: CAMPPlus, EcapaTdnn, Res2Net, ResNetSE, TDNN"
    with pytest.raises(ConfigError, match=f"did you mean 'EcapaTdnn'.*{valid}"):
        build_backbone("EcapaTDN", 80)
    with pytest.raises(
        ConfigError, match="unknown key 'chanels' in model_conf \\(EcapaTdnn\\); did you mean 'channels'"
    ):
        build_backbone("EcapaTdnn", 80, chanels=256)
    with pytest.raises(ConfigError, match="unknown pooling_type 'ASPP'.*Valid: ASP, SAP, TAP, TSP"):
        build_backbone("TDNN", 80, pooling_type="ASPP")
    with pytest.raises(ConfigError, match="did you mean 'global_context'"):
        build_backbone("TDNN", 80, pooling_conf={"global_contex": False})
    with pytest.raises(ConfigError, match="divisible by scale"):
        build_backbone("EcapaTdnn", 80, channels=100)
    with pytest.raises(ConfigError, match="input_size"):
        build_backbone("TDNN", 0)
    with pytest.raises(ConfigError, match="layers"):
        build_backbone("ResNetSE", 80, layers=(1, 1))
    with pytest.raises(ConfigError, match="unknown pooling_type"):
        build_pooling("max", 8)


def test_names_are_case_insensitive():
    assert isinstance(build_backbone("ecapa_tdnn", 40, **SMALL["EcapaTdnn"]), BACKBONES["EcapaTdnn"])
    assert isinstance(build_backbone("resnet-se", 40, **SMALL["ResNetSE"]), BACKBONES["ResNetSE"])
    assert build_pooling("tsp", 5).output_size == 10


@pytest.mark.parametrize("pooling,factor", [("ASP", 2), ("SAP", 1), ("TSP", 2), ("TAP", 1)])
def test_pooling_output_size_and_masking(pooling, factor):
    pool = build_pooling(pooling, 6, **({"attention_channels": 4} if pooling in ("ASP", "SAP") else {})).eval()
    assert pool.output_size == factor * 6
    x = torch.randn(2, 6, 15)
    x_garbage = x.clone()
    x_garbage[0, :, 7:] = 1e3
    with torch.no_grad():
        a = pool(x, torch.tensor([7, 15]))
        b = pool(x_garbage, torch.tensor([7, 15]))
        c = pool(x[:1, :, :7])
    assert a.shape == (2, factor * 6)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a[:1], c, atol=1e-5)


def test_statistics_are_exact_and_eps_safe():
    x = torch.tensor([[[1.0, 3.0, 100.0], [2.0, 2.0, -7.0]]], requires_grad=True)
    out = build_pooling("TSP", 2)(x, torch.tensor([2]))
    assert torch.allclose(out, torch.tensor([[2.0, 2.0, 1.0, 1e-3]]), atol=1e-6)  # std of a constant: sqrt(eps)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, :, 2].abs().max().item() == 0.0  # padded frame gets no gradient


def test_attention_gives_zero_weight_to_padding():
    pool = build_pooling("SAP", 4, attention_channels=3)
    x = torch.randn(1, 4, 6)
    x2 = x.clone()
    x2[..., 4:] = torch.randn(1, 4, 2) * 100
    with torch.no_grad():
        assert torch.equal(pool(x, torch.tensor([4])), pool(x2, torch.tensor([4])))


def test_time_conv_matches_conv1d():
    torch.manual_seed(0)
    for k, d in ((1, 1), (3, 2), (5, 1), (3, 4)):
        conv = TimeConv(5, 7, k, d)
        x = torch.randn(2, 9, 5)
        ref = nn.functional.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=d * (k - 1) // 2, dilation=d)
        assert torch.allclose(conv(x), ref.transpose(1, 2), atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["EcapaTdnn", "Res2Net"])
def test_trace_generalises_to_other_lengths(name):
    model = randomise_batch_norm(small(name, 40))
    example = (torch.randn(2, 30, 40), torch.tensor([30, 21]))
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        x, lengths = torch.randn(3, 47, 40), torch.tensor([47, 13, 30])
        assert torch.allclose(traced(x, lengths), model(x, lengths), atol=1e-5)


def test_very_short_clips():
    for name in BACKBONES:
        model = small(name, 40).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, 40), torch.tensor([1, 3]))
        assert out.shape == (2, 12) and torch.isfinite(out).all()


def test_build_head_by_loss_name():
    from mvector.models.heads import AAMHead

    head = build_head("AAM", 16, 4)
    assert isinstance(head, AAMHead) and tuple(head.weight.shape) == (4, 16)


@pytest.mark.filterwarnings("ignore")
def test_onnx_export_with_dynamic_lengths(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = randomise_batch_norm(small("EcapaTdnn", 40))
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 30, 40), torch.tensor([30, 21])),
        str(path),
        input_names=["features", "lengths"],
        output_names=["embedding"],
        dynamic_axes={"features": {0: "batch", 1: "frames"}, "lengths": {0: "batch"}},
        dynamo=False,
        opset_version=17,
    )
    x, lengths = torch.randn(3, 47, 40), torch.tensor([47, 13, 30])
    got = ort.InferenceSession(str(path)).run(None, {"features": x.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        assert abs(got - model(x, lengths).numpy()).max() < 1e-4
