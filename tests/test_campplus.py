"""CAM++: the released architecture's names and shapes, a channels-first reference forward, masking, export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import randomise_batch_norm

from mvector.errors import ConfigError
from mvector.models import BACKBONES, HEADS, EmbeddingModel, build_backbone, build_head
from mvector.models.campplus import CAMPPlus

torch.set_num_threads(1)

TINY = {"fcm_channels": 4, "init_channels": 16, "growth_rate": 8, "bn_size": 2, "num_layers": (2, 3, 2)}


def tiny(input_size: int = 40, embd_dim: int = 12, **extra) -> CAMPPlus:
    torch.manual_seed(0)
    return build_backbone("CAMPPlus", input_size, embd_dim=embd_dim, **{**TINY, **extra})


# ------------------------------------------------------------------------------------------------ the real shape
def test_default_model_has_the_released_checkpoints_tensors():
    model = build_backbone("CAMPPlus", 80)
    state = model.state_dict()
    assert len(state) == 937
    assert sum(p.numel() for p in model.parameters()) == 6_848_544
    assert sum(v.numel() for v in state.values()) == 6_930_842  # with running statistics: the "6.93 M"
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["head.conv1.weight"] == (32, 1, 3, 3)
    assert shapes["head.layer1.0.shortcut.0.weight"] == (32, 32, 1, 1)
    assert "head.layer1.1.shortcut.0.weight" not in shapes
    assert shapes["head.conv2.weight"] == (32, 32, 3, 3)
    assert shapes["xvector.tdnn.linear.weight"] == (128, 320, 5)
    assert shapes["xvector.block1.tdnnd12.cam_layer.linear_local.weight"] == (32, 128, 3)
    assert shapes["xvector.block2.tdnnd24.nonlinear1.batchnorm.weight"] == (256 + 23 * 32,)
    assert shapes["xvector.block1.tdnnd1.cam_layer.linear1.weight"] == (64, 128, 1)
    assert shapes["xvector.block1.tdnnd1.cam_layer.linear2.bias"] == (32,)
    assert shapes["xvector.transit1.linear.weight"] == (256, 512, 1)
    assert shapes["xvector.transit2.linear.weight"] == (512, 1024, 1)
    assert shapes["xvector.transit3.linear.weight"] == (512, 1024, 1)
    assert shapes["xvector.out_nonlinear.batchnorm.weight"] == (512,)
    assert shapes["xvector.dense.linear.weight"] == (192, 1024, 1)
    assert "xvector.dense.nonlinear.batchnorm.weight" not in shapes  # affine-free embedding batch norm
    assert shapes["xvector.dense.nonlinear.batchnorm.running_var"] == (192,)
    assert model.embd_dim == 192


def test_aliases_and_registry():
    assert "CAMPPlus" in BACKBONES
    for alias in ("CAM++", "campplus", "cam_pp", "CAMPPlus"):
        assert isinstance(build_backbone(alias, 40, **TINY), CAMPPlus)


# ------------------------------------------------------------------------------------------ reference forward
def _bn(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    w = state.get(prefix + ".weight")
    b = state.get(prefix + ".bias")
    return F.batch_norm(x, state[prefix + ".running_mean"], state[prefix + ".running_var"], w, b, False, 0.0, 1e-5)


def reference_forward(state: dict, feats: torch.Tensor, num_layers, dilations, seg_len: int) -> torch.Tensor:
    """CAM++ as the paper describes it, channels-first with plain conv1d/conv2d and no masking (one clip)."""
    x = feats.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
    x = F.relu(_bn(F.conv2d(x, state["head.conv1.weight"], padding=1), state, "head.bn1"))
    for layer in ("layer1", "layer2"):
        i = 0
        while f"head.{layer}.{i}.conv1.weight" in state:
            p = f"head.{layer}.{i}"
            stride = (2, 1) if i == 0 else 1
            h = F.relu(_bn(F.conv2d(x, state[p + ".conv1.weight"], stride=stride, padding=1), state, p + ".bn1"))
            h = _bn(F.conv2d(h, state[p + ".conv2.weight"], padding=1), state, p + ".bn2")
            if p + ".shortcut.0.weight" in state:
                x = _bn(F.conv2d(x, state[p + ".shortcut.0.weight"], stride=stride), state, p + ".shortcut.1")
            x = F.relu(h + x)
            i += 1
    x = F.relu(_bn(F.conv2d(x, state["head.conv2.weight"], stride=(2, 1), padding=1), state, "head.bn2"))
    x = x.flatten(1, 2)  # [B, C*F', T]
    x = F.conv1d(x, state["xvector.tdnn.linear.weight"], stride=2, padding=2)
    x = F.relu(_bn(x, state, "xvector.tdnn.nonlinear.batchnorm"))
    for b, (count, dil) in enumerate(zip(num_layers, dilations), start=1):
        for j in range(1, count + 1):
            p = f"xvector.block{b}.tdnnd{j}"
            h = F.relu(_bn(x, state, p + ".nonlinear1.batchnorm"))
            h = F.conv1d(h, state[p + ".linear1.weight"])
            h = F.relu(_bn(h, state, p + ".nonlinear2.batchnorm"))
            k = state[p + ".cam_layer.linear_local.weight"].shape[-1]
            y = F.conv1d(h, state[p + ".cam_layer.linear_local.weight"], padding=dil * (k - 1) // 2, dilation=dil)
            seg = F.avg_pool1d(h, seg_len, seg_len, ceil_mode=True)
            seg = seg.repeat_interleave(seg_len, dim=-1)[..., : h.shape[-1]]
            context = h.mean(-1, keepdim=True) + seg
            g = F.relu(F.conv1d(context, state[p + ".cam_layer.linear1.weight"], state[p + ".cam_layer.linear1.bias"]))
            g = torch.sigmoid(F.conv1d(g, state[p + ".cam_layer.linear2.weight"], state[p + ".cam_layer.linear2.bias"]))
            x = torch.cat([x, y * g], dim=1)
        p = f"xvector.transit{b}"
        x = F.conv1d(F.relu(_bn(x, state, p + ".nonlinear.batchnorm")), state[p + ".linear.weight"])
    x = F.relu(_bn(x, state, "xvector.out_nonlinear.batchnorm"))
    stats = torch.cat([x.mean(-1), x.std(-1, unbiased=True)], dim=1)
    emb = F.conv1d(stats.unsqueeze(-1), state["xvector.dense.linear.weight"]).squeeze(-1)
    return _bn(emb, state, "xvector.dense.nonlinear.batchnorm")


@pytest.mark.parametrize("frames", [37, 250])
def test_matches_the_channels_first_reference(frames):
    model = randomise_batch_norm(tiny(40, seg_len=20, dilations=(1, 2, 3)))
    state = model.state_dict()
    x = torch.randn(2, frames, 40)
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward(state, x, TINY["num_layers"], (1, 2, 3), 20)
    assert (ours - ref).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------------------- masking / sizes
@pytest.mark.parametrize("pooling", ["TSP", "ASP", "TAP", "SAP"])
def test_padding_invariance_with_partial_segments(pooling):
    extra = {"attention_channels": 8} if pooling in ("ASP", "SAP") else {}
    model = randomise_batch_norm(tiny(40, pooling_type=pooling, seg_len=7, **extra))
    gen = torch.Generator().manual_seed(2)
    short = torch.randn(1, 45, 40, generator=gen)
    long = torch.randn(1, 80, 40, generator=gen)
    batch = torch.full((2, 80, 40), 5.0)  # padding content must not matter
    batch[0, :45] = short[0]
    batch[1] = long[0]
    with torch.inference_mode():
        alone = model(short)
        padded = model(batch, torch.tensor([45, 80]))
        long_alone = model(long)
    assert (alone[0] - padded[0]).abs().max().item() <= 1e-4
    assert (long_alone[0] - padded[1]).abs().max().item() <= 1e-4
    assert (alone[0] - long_alone[0]).abs().max().item() > 1e-3


@pytest.mark.parametrize("feat", [24, 40, 64, 81, 513])
def test_any_feature_size(feat):
    model = tiny(feat).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 21, feat), torch.tensor([21, 1]))
    assert out.shape == (2, 12) and torch.isfinite(out).all()


def test_single_frame_and_float_lengths():
    model = randomise_batch_norm(tiny())
    x = torch.randn(3, 20, 40)
    with torch.no_grad():
        a = model(x)
        b = model(x, torch.tensor([20.0, 20.0, 20.0]))
        one = model(x[:1, :1])
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.isfinite(one).all()  # one frame: the corrected std does not divide by zero


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="num_layers"):
        build_backbone("CAMPPlus", 80, num_layers=(2, 2), dilations=(1, 2, 2))
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        build_backbone("CAMPPlus", 80, kernel_size=4)
    with pytest.raises(ConfigError, match="growth_rate"):
        build_backbone("CAMPPlus", 80, growth_rate=0)
    with pytest.raises(ConfigError, match="did you mean 'growth_rate'"):
        build_backbone("CAMPPlus", 80, growth_rat=16)
    with pytest.raises(ConfigError, match="fcm_blocks"):
        build_backbone("CAMPPlus", 80, fcm_blocks=(0, 2))


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("loss", sorted(HEADS))
def test_trains_with_every_head(loss):
    torch.manual_seed(3)
    model = tiny(40, embd_dim=16).train()
    head = build_head(loss, 16, 4)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=3e-3)
    x = torch.randn(8, 30, 40)
    lengths = torch.tensor([30, 25, 20, 30, 18, 30, 22, 27])
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    losses = []
    for _ in range(8):
        loss_value, _ = head(model(x, lengths), labels)
        opt.zero_grad()
        loss_value.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss_value.item())
    assert losses[-1] < 0.8 * losses[0], losses


# -------------------------------------------------------------------------------------------------- export
def _embedding_model() -> EmbeddingModel:
    from mvector.features import build_featurizer

    fbank = build_featurizer("Fbank", {"num_mel_bins": 40, "dither": 0.0}, "mean")
    return EmbeddingModel(fbank, randomise_batch_norm(tiny(40, seg_len=30))).eval()


@pytest.mark.filterwarnings("ignore")
def test_torchscript_export_generalises(tmp_path):
    from mvector.embedding.backends import load_torchscript
    from mvector.export import export_torchscript

    model = _embedding_model()
    path = export_torchscript(model, tmp_path / "model.ts", example_seconds=1.0)
    loaded = load_torchscript(path)
    waves = torch.randn(3, 40000) * 0.1
    lengths = torch.tensor([40000, 9000, 25000])  # several CAM segments, other lengths than the example
    with torch.no_grad():
        assert torch.allclose(loaded(waves, lengths), model(waves, lengths), atol=1e-4)


@pytest.mark.filterwarnings("ignore")
def test_onnx_export_generalises(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mvector.export import export_onnx

    model = _embedding_model()
    path = export_onnx(model, tmp_path / "model.onnx", example_seconds=1.0)
    waves = torch.randn(2, 38000) * 0.1
    lengths = torch.tensor([38000, 12000])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, (waves.numpy(), lengths.numpy()))))[0]
    with torch.no_grad():
        assert abs(got - model(waves, lengths).numpy()).max() < 1e-4
