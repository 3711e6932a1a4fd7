"""Shared command-line plumbing for every subcommand: boolean flags, config overrides, help, errors.

Every boolean option is written ``--flag`` / ``--no-flag`` (:func:`add_flag`); a :class:`CliParser` also accepts
the original project's spelling ``--flag true|false`` (and ``--flag=false``) for its scripts.

>>> parser = base_parser("demo")
>>> args, overrides = parse_args(parser, ["--use_gpu", "False", "--dataset_conf.batch_size=8"])
>>> args.use_gpu, overrides
(False, {'dataset_conf.batch_size': '8'})
>>> parse_args(parser, ["--no-use_gpu"])[0].use_gpu
False
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from mvector.config import DEFAULT_CONFIG, bundled_configs, parse_overrides
from mvector.errors import MVectorError

__all__ = [
    "HelpFormatter", "CliParser", "add_flag", "str2bool", "base_parser", "parse_args", "run_cli",
    "add_threads_argument", "apply_threads",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows an option's default once and keeps the description's and epilog's line breaks.

    No default is shown for a required option, for a default of None (the help says what happens instead), or
    when the help text already names its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


#: The words ``--flag VALUE`` accepts (any case), as in the original project's scripts.
BOOL_WORDS = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}


def str2bool(text: str) -> bool:
    """Parse true/false/yes/no/1/0 for boolean flags.

    >>> str2bool("False"), str2bool("1")
    (False, True)
    """
    lowered = str(text).strip().lower()
    if lowered in BOOL_WORDS:
        return BOOL_WORDS[lowered]
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


def add_flag(parser, name: str, *, default: bool | None = False, help: str) -> argparse.Action:
    """Add the boolean option ``name`` as ``--name`` / ``--no-name`` (the one boolean style of every command).

    ``parser`` may be a parser or an argument group. A :class:`CliParser` also reads ``--name true|false``.

    >>> parser = CliParser(prog="demo")
    >>> _ = add_flag(parser, "--json", help="print JSON")
    >>> [parser.parse_args(a).json for a in ([], ["--json"], ["--no-json"], ["--json", "false"], ["--json=yes"])]
    [False, True, False, False, True]
    """
    return parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help)


class CliParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with :class:`HelpFormatter` that reads ``--flag true|false`` for ``--flag``/``--no-flag``.

    >>> parser = CliParser(prog="demo")
    >>> _ = add_flag(parser, "--use_gpu", help="run on CUDA")
    >>> _ = parser.add_argument("path")
    >>> vars(parser.parse_args(["--use_gpu", "a.wav"])), vars(parser.parse_args(["--use_gpu", "off", "a.wav"]))
    ({'use_gpu': True, 'path': 'a.wav'}, {'use_gpu': False, 'path': 'a.wav'})
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def flag_names(self) -> set[str]:
        """The positive spellings (``--flag``) of this parser's boolean options."""
        return {
            name for action in self._actions if isinstance(action, argparse.BooleanOptionalAction)
            for name in action.option_strings if not name.startswith("--no-")
        }

    def spell_flags(self, args: Sequence[str]) -> list[str]:
        """Rewrite ``--flag true|false`` and ``--flag=value`` as ``--flag`` / ``--no-flag`` (up to a ``--``).

        >>> parser = CliParser(prog="demo")
        >>> _ = add_flag(parser, "--plot", help="draw")
        >>> parser.spell_flags(["--plot", "False", "a.wav", "--plot=1", "--", "--plot", "no"])
        ['--no-plot', 'a.wav', '--plot', '--', '--plot', 'no']
        """
        names, out, items = self.flag_names(), [], list(args)
        index = 0
        while index < len(items):
            item = items[index]
            if item == "--":
                out += items[index:]
                break
            name, has_value, value = item.partition("=")
            nxt = items[index + 1] if index + 1 < len(items) else None
            if name in names and (has_value or (nxt is not None and nxt.lower() in BOOL_WORDS)):
                word = value if has_value else nxt
                try:
                    out.append(name if str2bool(word) else "--no-" + name[2:])
                except argparse.ArgumentTypeError as err:
                    self.error(f"argument {name}: {err}")
                index += 1 if has_value else 2
                continue
            out.append(item)
            index += 1
        return out

    def parse_known_args(self, args=None, namespace=None):
        """Parse like ``ArgumentParser``, after :meth:`spell_flags`."""
        items = sys.argv[1:] if args is None else args
        return super().parse_known_args(self.spell_flags(items), namespace)


def add_use_gpu_flag(parser, help: str = "run on CUDA") -> argparse.Action:
    """``--use_gpu`` / ``--no-use_gpu`` with the one default of every command: None, CUDA when available (the rule
    of :func:`~mvector.utils.device.select_device`; :func:`parse_args` turns None into the answer).

    >>> parser = CliParser(prog="demo")
    >>> _ = add_use_gpu_flag(parser)
    >>> parser.parse_args([]).use_gpu is None, parser.parse_args(["--no-use_gpu"]).use_gpu
    (True, False)
    """
    return add_flag(parser, "--use_gpu", default=None, help=f"{help} (default: when CUDA is available)")


def base_parser(
    description: str, prog: str | None = None, default_configs: str | None = DEFAULT_CONFIG, configs_note: str = "",
) -> CliParser:
    """A parser with ``--configs`` and ``--use_gpu``; any ``--section.key=value`` is a config override.

    ``configs_note`` says in ``--help`` what a ``--configs`` of None means (``default_configs=None``).

    >>> base_parser("Train.", prog="mvector train").parse_args([]).configs
    'ecapa_tdnn'
    """
    parser = CliParser(
        prog=prog,
        description=description,
        epilog="Any config key can be overridden: --dataset_conf.batch_size=32 --train_conf.max_epoch=2",
    )
    parser.add_argument(
        "--configs",
        default=default_configs,
        help=f"bundled config ({', '.join(bundled_configs())}) or YAML path"
        + (f" ({configs_note})" if configs_note else ""),
    )
    add_use_gpu_flag(parser)
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
        from mvector.utils.device import select_device

        args.use_gpu = select_device(None).type == "cuda"
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
