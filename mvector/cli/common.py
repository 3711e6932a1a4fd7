"""Shared command-line plumbing for the root scripts: boolean flags, config overrides, logging.

>>> parser = base_parser("demo")
>>> args, overrides = parse_args(parser, ["--use_gpu", "False", "--dataset_conf.batch_size=8"])
>>> args.use_gpu, overrides
(False, {'dataset_conf.batch_size': '8'})
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from mvector.config import bundled_configs, parse_overrides
from mvector.errors import MVectorError

__all__ = [
    "HelpFormatter", "str2bool", "base_parser", "parse_args", "run_cli", "add_threads_argument", "apply_threads"
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every option's default and keeps the description's and epilog's line breaks."""


def str2bool(text: str) -> bool:
    """Parse true/false/yes/no/1/0 for boolean flags.

    >>> str2bool("False"), str2bool("1")
    (False, True)
    """
    lowered = str(text).strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive_int(text: str) -> int:
    """An integer >= 1 for counts such as ``--threads``.

    >>> positive_int("2")
    2
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser, default_help: str = "the usable CPUs not busy") -> None:
    """Add ``--threads N`` (CPU threads of the command; see :mod:`mvector.utils.threads`).

    >>> p = argparse.ArgumentParser(); add_threads_argument(p); p.parse_args(["--threads", "1"]).threads
    1
    """
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help=f"CPU threads; None: {default_help} with other jobs (or $MVECTOR_NUM_THREADS)",
    )


def apply_threads(args: argparse.Namespace, verbose: bool = False):
    """Set this process's threads from ``args.threads`` and the thread policy; returns the
    :class:`~mvector.utils.threads.ThreadPlan`.

    >>> apply_threads(argparse.Namespace(threads=1)).intra_op
    1
    """
    from mvector.utils.threads import apply_thread_policy

    return apply_thread_policy(getattr(args, "threads", None), verbose=verbose)


def base_parser(
    description: str, prog: str | None = None, default_configs: str | None = "ecapa_tdnn"
) -> argparse.ArgumentParser:
    """A parser with ``--configs`` and ``--use_gpu``; any ``--section.key=value`` is a config override."""
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=HelpFormatter,
        description=description,
        epilog="Any config key can be overridden: --dataset_conf.batch_size=32 --train_conf.max_epoch=2",
    )
    parser.add_argument(
        "--configs",
        default=default_configs,
        help=f"bundled config ({', '.join(bundled_configs())}) or YAML path",
    )
    parser.add_argument(
        "--use_gpu", type=str2bool, default=None, help="run on CUDA: true or false (%(default)s: CUDA when available)"
    )
    add_threads_argument(parser)
    return parser


def _is_config_key(name: str) -> bool:
    """``section.key`` or a top-level key such as ``use_model`` / ``use_loss``."""
    from mvector.config import SCHEMA, Key

    return "." in name or isinstance(SCHEMA.get(name), Key)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
    """Parse known flags; everything of the form ``--a.b=value`` becomes a dotted override."""
    args, rest = parser.parse_known_args(argv)
    dotted = [a for a in rest if a.startswith("--") and _is_config_key(a.split("=", 1)[0][2:])]
    unknown = [a for a in rest if a.startswith("--") and a not in dotted]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        overrides = parse_overrides(rest)
    except MVectorError as err:
        parser.error(str(err))
    if getattr(args, "use_gpu", None) is None and hasattr(args, "use_gpu"):
        import torch

        args.use_gpu = torch.cuda.is_available()
    return args, overrides


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line: ``warning: <message>``, without the category and source line."""
    return f"warning: {message}\n"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(_one_line_warning(message, category, filename, lineno), end="", file=file or sys.stderr, flush=True)


def run_cli(main, argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; an mvector error prints one clear line and exits 2 instead of a traceback.

    ``main`` may return an exit status (an int); None means 0. While it runs, Python warnings (augmentation
    notes, unused labels ...) print as one plain ``warning: ...`` line each.

    >>> def job(argv):
    ...     warnings.warn("noise folder is empty; noise augmentation is off")
    ...     return 1
    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     status = run_cli(job, [])
    >>> status, err.getvalue()
    (1, 'warning: noise folder is empty; noise augmentation is off\\n')
    """
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            status = main(argv)
    except MVectorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous
    return int(status) if isinstance(status, int) and not isinstance(status, bool) else 0
