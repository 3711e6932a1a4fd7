"""The package as a user installs it: a wheel built from the checkout installs into a fresh environment with a
working `mvector` command that runs the installed copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pip_install_gives_a_working_mvector_command(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    # The wheel is built by this interpreter (no download of build tools), then installed into the fresh venv,
    # which sees this interpreter's packages (torch, numpy, ...) but not the editable checkout.
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", "dist", str(ROOT)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("mvector-*.whl")
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", str(wheel)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    command = venv / "bin" / "mvector"
    helps = {}
    for args in (["--help"], ["train", "--help"], ["eval", "--help"]):
        done = subprocess.run([str(command), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        helps[args[0]] = done.stdout
    assert "create-data" in helps["--help"]
    assert "--resume_model" in helps["train"] and "(default: models/)" in helps["train"]
    located = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mvector.cli; print(mvector.cli.__file__)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert str(venv) in located.stdout, located.stdout + located.stderr  # the installed copy, not the checkout
