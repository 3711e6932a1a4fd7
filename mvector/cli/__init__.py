"""The ``mvector`` console script: one subcommand per task, each a module of this package.

Every subcommand lives in ``mvector/cli/<module>.py`` and exposes ``main(argv=None, prog=None) -> int``
(argument parsing and printing only; the work is done by the library). The root scripts (``train.py``,
``eval.py``, ...) are shims over the same ``main`` functions.

>>> sorted(COMMANDS)[:3]
['calibrate', 'contrast', 'create-data']
>>> main(["--version"]) == 0
mvector ...
True
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from mvector.utils.threads import prepare_environment

# Before any subcommand imports torch: OpenMP threads that wait sleep instead of spinning (see mvector.utils.threads).
prepare_environment()

from mvector.cli.common import base_parser, parse_args, run_cli, str2bool  # noqa: E402

__all__ = ["COMMANDS", "main", "base_parser", "parse_args", "run_cli", "str2bool"]

#: subcommand -> (module under mvector.cli, one-line help). The help text is here so that ``mvector --help``
#: does not import torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "create-data": ("create_data", "write train/test lists and trials from a corpus folder"),
    "train": ("train", "train a speaker-embedding model from a YAML configuration"),
    "eval": ("evaluate", "evaluate a model folder: EER, minDCF, calibration measures"),
    "export": ("export", "export a model folder to TorchScript and/or ONNX"),
    "import": ("import_model", "import a pretrained third-party checkpoint as an mvector model folder"),
    "contrast": ("contrast", "are two recordings the same speaker?"),
    "recognize": ("recognize", "enrol speakers in a database and identify recordings"),
    "calibrate": ("calibrate", "fit a score calibration from labelled trials and store it with the model"),
    "diarize": ("diarize", "who spoke when: diarize a recording into RTTM and JSON"),
    "serve": ("serve", "run the HTTP verification service"),
    "keys": ("keys", "create, list and revoke API keys of the HTTP service"),
    "gallery": ("gallery", "copy galleries, API keys and audit log between stores (folder <-> PostgreSQL)"),
    "samples": ("samples", "write sample recordings (synthetic speakers) for the README's examples"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: mvector <command> [options]   (mvector <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mvector <command> ...``; returns the exit status (0 ok, 2 a usage or input error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from mvector import __version__

        print(f"mvector {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        from mvector.errors import nearest

        hint = nearest(name, COMMANDS)
        print(f"mvector: unknown command {name!r}{f'; did you mean {hint!r}?' if hint else ''}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(f"mvector.cli.{COMMANDS[name][0]}")
    return int(module.main(args[1:], prog=f"mvector {name}") or 0)


if __name__ == "__main__":  # python -m mvector.cli
    sys.exit(main())
