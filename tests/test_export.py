"""EmbeddingModel, TorchScript and ONNX export (mvector.export) with the real featurizers and backbones."""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest
import torch

from mvector.embedding.backends import ExportDependencyError, OnnxEmbedder, load_torchscript
from mvector.errors import CheckpointError, MVectorError
from mvector.export import export_onnx, export_torchscript
from mvector.features import build_featurizer
from mvector.models import build_backbone
from mvector.models.embedding_model import EmbeddingModel

SR = 16000


def padded(lengths, seed=0):
    """A zero-padded batch of speech-like noise with the given lengths (samples)."""
    rng = np.random.default_rng(seed)
    waves = np.zeros((len(lengths), max(lengths)), dtype=np.float32)
    for row, n in enumerate(lengths):
        t = np.arange(n) / SR
        waves[row, :n] = 0.1 * np.sin(2 * np.pi * (120 + 40 * row) * t) + 0.03 * rng.standard_normal(n)
    return torch.from_numpy(waves), torch.tensor(lengths, dtype=torch.long)


@pytest.fixture(scope="module")
def ecapa():
    torch.manual_seed(0)
    fz = build_featurizer("Fbank")
    return EmbeddingModel(fz, build_backbone("EcapaTdnn", fz.feature_dim, channels=64)).eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    fz = build_featurizer("MelSpectrogram")
    backbone = build_backbone("ResNetSE", fz.feature_dim, channels=8, layers=(1, 1, 1, 1), embd_dim=32)
    return EmbeddingModel(fz, backbone).eval()


@pytest.fixture(scope="module")
def resnet_onnx(resnet, tmp_path_factory):
    return export_onnx(resnet, tmp_path_factory.mktemp("onnx") / "resnet.onnx", example_seconds=1.0)


# Batch sizes and lengths unlike the export example (2 clips of 1 s and 0.75 s), padded batches included.
CASES = [[4000], [24000, 9000, 17000], [8000, 8000, 8000, 5000, 12000]]


def test_embedding_model_basics(ecapa):
    w, n = padded([8000, 12000])
    with torch.no_grad():
        emb = ecapa(w, n)
        full = ecapa(w[1:], None)
    assert tuple(emb.shape) == (2, 192) and ecapa.embd_dim == 192 and ecapa.sample_rate == SR
    assert torch.allclose(emb[1], full[0], atol=1e-5)  # lengths=None is "every row full"
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        ecapa(torch.zeros(8000))


def test_torchscript_round_trip(ecapa, tmp_path):
    path = export_torchscript(ecapa, tmp_path / "sub" / "ecapa.pt", example_seconds=1.0)
    assert path.is_file()
    with zipfile.ZipFile(path) as zf:  # metadata stored as an extra file
        assert any(name.endswith("extra/mvector.json") for name in zf.namelist())
    ts = load_torchscript(path)
    with torch.no_grad():
        for lengths in CASES:
            w, n = padded(lengths)
            ref, got = ecapa(w, n), ts(w, n)
            assert got.shape == ref.shape
            assert (got - ref).abs().max().item() < 1e-4, lengths
        # Padding invariance survives the trace: a clip alone == the same clip padded in a batch.
        w, n = padded([9000, 16000])
        alone = ts(w[:1, :9000], n[:1])
        assert (ts(w, n)[0] - alone[0]).abs().max().item() < 1e-4


def test_torchscript_does_not_touch_the_model(resnet, tmp_path):
    resnet.train()
    try:
        export_torchscript(resnet, tmp_path / "m.pt", example_seconds=0.5)
        assert resnet.training  # exported from a copy
    finally:
        resnet.eval()


@pytest.mark.parametrize("which", ["ecapa", "resnet"])
def test_onnx_round_trip_matches_pytorch(which, request, tmp_path):
    model = request.getfixturevalue(which)
    if which == "resnet":
        path = request.getfixturevalue("resnet_onnx")
    else:
        path = export_onnx(model, tmp_path / f"{which}.onnx", example_seconds=1.0)
    embedder = OnnxEmbedder(path)
    assert embedder.sample_rate == SR and embedder.embd_dim == model.embd_dim
    with torch.no_grad():
        for lengths in CASES:
            w, n = padded(lengths, seed=len(lengths))
            ref = model(w, n).numpy()
            got = embedder(w.numpy(), n.numpy())
            assert got.shape == ref.shape and got.dtype == np.float32
            assert np.abs(got - ref).max() < 1e-4, lengths
        # numpy and torch inputs, a single 1-D clip, and lengths=None.
        w, n = padded([7000])
        single = embedder(w[0].numpy())
        assert np.abs(single - model(w, n).numpy()).max() < 1e-4
        assert np.abs(embedder(w, n) - single).max() < 1e-6


def test_onnx_axes_are_dynamic(resnet_onnx):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(resnet_onnx)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"waveforms": ["batch", "samples"], "lengths": ["batch"]}
    out = graph.output[0]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim][0] == "batch"


def test_onnx_embedder_input_errors(resnet_onnx):
    embedder = OnnxEmbedder(resnet_onnx)
    with pytest.raises(ValueError, match="lengths for"):
        embedder(np.zeros((2, 8000), np.float32), np.array([8000]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        embedder(np.zeros((1, 8000), np.float32), np.array([9000]))
    with pytest.raises(ValueError, match="shape"):
        embedder(np.zeros((1, 1, 8000), np.float32))


def test_missing_files_and_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_torchscript(tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="not found"):
        OnnxEmbedder(tmp_path / "none.onnx")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_torchscript(junk)
    with pytest.raises(CheckpointError, match="junk.pt"):
        OnnxEmbedder(junk)
    with pytest.raises(TypeError, match="EmbeddingModel"):
        export_torchscript(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_missing_onnx_packages_name_the_extra(resnet, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ExportDependencyError, match=r'pip install "mvector\[export\]"'):
        export_onnx(resnet, tmp_path / "r.onnx")
    with pytest.raises(ImportError, match="onnxruntime"):
        OnnxEmbedder(tmp_path / "r.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportDependencyError, match="'onnx' package"):
        export_onnx(resnet, tmp_path / "r.onnx", verify=False)
    assert not (tmp_path / "r.onnx").exists()


class _ShapeBakingBackbone(torch.nn.Module):
    """Uses a length as a Python number: tracing bakes the example's value in."""

    embd_dim = 80

    def forward(self, features, lengths):
        n = int(lengths[0])
        return features[:, :n].mean(1)


class _UnfoldFeaturizer(torch.nn.Module):
    """Frames with Tensor.unfold, which the ONNX exporter cannot handle with a dynamic length."""

    sample_rate = SR

    def forward(self, waves, lengths):
        frames = waves.unfold(1, 400, 160)
        return frames[..., :80], torch.div(lengths - 400, 160, rounding_mode="floor") + 1


def test_non_generalising_trace_is_reported(tmp_path):
    model = EmbeddingModel(build_featurizer("Fbank"), _ShapeBakingBackbone())
    with pytest.raises(MVectorError, match="does not generalise"):
        export_torchscript(model, tmp_path / "bad.pt", example_seconds=0.5)
    assert not (tmp_path / "bad.pt").exists()


def test_onnx_export_failure_is_short_and_clear(tmp_path):
    pytest.importorskip("onnxruntime")
    model = EmbeddingModel(_UnfoldFeaturizer(), build_backbone("TDNN", 80, channels=16, embd_dim=8))
    with pytest.raises(MVectorError, match="ONNX export failed") as info:
        export_onnx(model, tmp_path / "bad.onnx", example_seconds=0.5)
    assert len(str(info.value)) < 400
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob(".bad.onnx*"))
