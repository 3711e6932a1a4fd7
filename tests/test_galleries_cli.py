"""Named galleries and the ``among`` restriction from the command line and from Python, on a folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from mvector.cli import keys as keys_cli
from mvector.cli import recognize
from mvector.data.synthetic import make_voices, synthesize_utterance
from mvector.demo import tiny_checkpoint
from mvector.inference.predictor import MVectorPredictor

VOICES = make_voices(3, seed=11)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("galleries")
    files = {}
    for i, name in enumerate(("alice", "bob", "carol")):
        path = root / f"{name}.wav"
        soundfile.write(path, synthesize_utterance(VOICES[i], 1.5, rng=np.random.default_rng(i)), 16000)
        files[name] = str(path)
    return {"model": str(tiny_checkpoint(root / "model")), "db": str(root / "db"), "files": files}


def run(capsys, *argv: str) -> tuple[int, list[dict]]:
    status = recognize.main(list(argv))
    out = capsys.readouterr().out
    return status, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_recognize_in_a_gallery_and_among_names(setup, capsys):
    base = ["--model_path", setup["model"], "--audio_db_path", setup["db"], "--threshold", "-1", "--json"]
    for name in ("alice", "bob"):
        assert run(capsys, *base, "--gallery", "house", "--register", name, setup["files"][name])[0] == 0
    assert run(capsys, *base, "--register", "carol", setup["files"]["carol"])[0] == 0  # the default gallery
    status, rows = run(capsys, *base, "--gallery", "house", "--list")
    assert status == 0 and rows[0]["speakers"] == ["alice", "bob"]
    status, rows = run(capsys, *base, "--list")
    assert rows[0]["speakers"] == ["carol"]
    status, rows = run(capsys, *base, "--gallery", "house", "--recognize", setup["files"]["alice"], "--among", "bob")
    assert status == 0 and rows[0]["name"] == "bob" and rows[0]["gallery_size"] == 1
    status, rows = run(capsys, *base, "--gallery", "house", "--recognize", setup["files"]["alice"], "--top_k", "5")
    assert [c["name"] for c in rows[0]["candidates"]] == sorted(["alice", "bob"], key=lambda n: n != "alice")
    assert recognize.main([*base, "--gallery", "office", "--list"]) == 2
    assert "no gallery 'office'" in capsys.readouterr().err
    assert recognize.main([*base, "--gallery", "Bad/Name", "--list"]) == 2
    assert "gallery name" in capsys.readouterr().err


def test_predictor_galleries_are_separate_and_lazy(setup):
    with MVectorPredictor(setup["model"], audio_db_path=setup["db"] + "-py", use_gpu=False, threshold=-1.0) as p:
        p.register("alice", setup["files"]["alice"], gallery="house")
        p.register("alice", setup["files"]["bob"])  # another alice, in the default gallery
        assert p.speakers("house") == ["alice"] and p.speakers() == ["alice"]
        assert sorted(p._dbs) == ["default", "house"]
        house = p.gallery_db("house").mean_embedding("alice")
        assert not np.allclose(house, p.db.mean_embedding("alice"))
        name, _ = p.recognize(setup["files"]["alice"], gallery="house", among=["alice"])
        assert name == "alice"
        p.remove("alice", gallery="house")
        assert p.speakers("house") == [] and p.speakers() == ["alice"]


def test_keys_cli_galleries(setup, capsys):
    folder = setup["db"] + "-keys"
    assert keys_cli.main(["create", "--audio_db_path", folder, "--scope", "write", "--galleries", "house"]) == 0
    assert "galleries house" in capsys.readouterr().out
    assert keys_cli.main(["list", "--audio_db_path", folder, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["galleries"] == ["house"]
    assert keys_cli.main(["create", "--audio_db_path", folder, "--scope", "admin", "--galleries", "house"]) == 2
    assert "admin key reaches every gallery" in capsys.readouterr().err
