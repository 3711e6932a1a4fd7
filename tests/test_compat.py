"""The original project's public import paths (``mvector.trainer``, ``mvector.predict``) and nothing more.

The library's own old module paths (``mvector.metrics``, ``mvector.predictor``, ...) are gone; the two paths the
original project documented stay as thin re-exports that no module inside the package imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mvector"
COMPAT = {"mvector.trainer": "MVectorTrainer", "mvector.predict": "MVectorPredictor"}


def test_original_public_paths_import_the_real_classes():
    from mvector.inference.predictor import MVectorPredictor
    from mvector.predict import MVectorPredictor as OldPredictor
    from mvector.trainer import MVectorTrainer as OldTrainer
    from mvector.training.trainer import MVectorTrainer

    assert OldTrainer is MVectorTrainer
    assert OldPredictor is MVectorPredictor


OLD_PATHS = ["mvector.metrics", "mvector.scoring", "mvector.speaker_db", "mvector.record", "mvector.losses",
             "mvector.distributed", "mvector.augment", "mvector.predictor"]


def test_internal_old_paths_are_gone():
    # A fresh interpreter without site-packages (-S): only this checkout's package is importable, not an editable
    # install of another checkout. Each old path must fail on its own name (not on a missing dependency).
    probe = (
        "import sys\n"
        f"sys.path.insert(0, {str(PACKAGE.parent)!r})\n"
        f"for name in {OLD_PATHS!r}:\n"
        "    try:\n"
        "        __import__(name)\n"
        "        print(name, 'imported')\n"
        "    except ModuleNotFoundError as error:\n"
        "        print(name, 'missing' if error.name == name else f'failed on {error.name}')\n"
    )
    done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == [f"{name} missing" for name in OLD_PATHS]


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 and path.parent == PACKAGE:
                base = f"mvector.{base}" if base else "mvector"
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in COMPAT:
            found.add(node.value)  # importlib.import_module("mvector.trainer") and lazy-attribute tables
    return found


def test_nothing_in_the_package_uses_the_compat_paths():
    users = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.stem in ("trainer", "predict"):
            continue
        hits = _imported_modules(path) & set(COMPAT)
        users += [f"{path.relative_to(PACKAGE.parent)} uses {h}" for h in sorted(hits)]
    assert not users, "\n".join(users)


def test_the_check_sees_a_compat_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from mvector.trainer import MVectorTrainer\n", encoding="utf-8")
    assert "mvector.trainer" in _imported_modules(sample)
