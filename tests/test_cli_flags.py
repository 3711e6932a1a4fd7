"""Every ``mvector`` subcommand's parser: one boolean style (``--flag`` / ``--no-flag``, ``--flag true|false`` read
too) and ``--help`` text a new user can read (one default per option, none for required options or None)."""

from __future__ import annotations

import argparse
import importlib

import pytest

from mvector.cli import COMMANDS
from mvector.cli.common import CliParser, HelpFormatter, str2bool


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for command, (module, _) in COMMANDS.items():
        parser = importlib.import_module(f"mvector.cli.{module}").build_parser(f"mvector {command}")
        found.append((f"mvector {command}", parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += [(f"mvector {command} {name}", sub) for name, sub in action.choices.items()]
    return found


PARSERS = _parsers()
IDS = [name for name, _ in PARSERS]


def _style_problems(name: str, parser: argparse.ArgumentParser) -> list[str]:
    problems = []
    if not isinstance(parser, CliParser):
        problems.append(f"{name}: not a CliParser (reads no --flag true|false)")
    if not issubclass(parser.formatter_class, HelpFormatter):
        problems.append(f"{name}: --help not formatted by HelpFormatter")
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        option = "/".join(action.option_strings) or action.dest
        if isinstance(action, argparse.BooleanOptionalAction):
            continue
        if action.nargs == 0 or action.type is str2bool or isinstance(action.default, bool):
            problems.append(f"{name} {option}: a boolean not written --flag/--no-flag (use common.add_flag)")
    return problems


def test_every_parser_is_found():
    assert {"mvector train", "mvector eval", "mvector contrast", "mvector keys list"} <= set(IDS)


@pytest.mark.parametrize("name,parser", PARSERS, ids=IDS)
def test_booleans_have_one_style(name, parser):
    assert not _style_problems(name, parser)


def test_the_style_check_catches_the_old_styles():
    parser = CliParser(prog="old")
    parser.add_argument("--json", action="store_true", help="x")
    parser.add_argument("--use_gpu", type=str2bool, default=False, help="x")
    parser.add_argument("--overwrite", type=str2bool, nargs="?", const=True, default=False, help="x")
    assert len(_style_problems("old", parser)) == 3
    assert _style_problems("plain", argparse.ArgumentParser(prog="plain"))


@pytest.mark.parametrize("name,parser", PARSERS, ids=IDS)
def test_every_flag_reads_all_spellings(name, parser):
    for flag in sorted(parser.flag_names()):
        negative = "--no-" + flag[2:]
        assert parser.spell_flags([flag, "false"]) == [negative]
        assert parser.spell_flags([flag, "True"]) == [flag]
        assert parser.spell_flags([f"{flag}=0"]) == [negative]
        assert parser.spell_flags([flag, "a.wav"]) == [flag, "a.wav"]  # a positional after a flag stays one


def test_seed_spelling_parses_on_a_real_command():
    from mvector.cli.diarize import build_parser

    parser = build_parser("mvector diarize")
    assert parser.parse_args(["a.wav", "--resegment", "false", "--plot"]).resegment is False
    assert parser.parse_args(["--no-resegment", "a.wav"]).resegment is False
    assert parser.parse_args(["--plot", "a.wav"]).plot is True
    with pytest.raises(SystemExit):
        parser.parse_args(["a.wav", "--plot=maybe"])


@pytest.mark.parametrize("name,parser", PARSERS, ids=IDS)
def test_help_shows_each_default_once(name, parser):
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        shown = " ".join(HelpFormatter(name)._get_help_string(action).split())
        assert shown.count("(default:") <= 1, f"{name} {action.option_strings}: {shown}"
        if action.required or action.default is None:
            assert "(default: None)" not in shown, f"{name} {action.option_strings}: {shown}"
    assert "(default: None)" not in text


@pytest.mark.parametrize("name,parser", PARSERS, ids=IDS)
def test_help_says_each_thing_once_in_the_house_style(name, parser):
    text = parser.format_help()
    first = (parser.description or "").strip().splitlines()
    if first:
        assert text.count(first[0]) == 1, f"{name}: description printed twice"
    assert "python infer_" not in text and "python eval.py" not in text, f"{name}: examples use the root scripts"
    assert "nroll " not in text and "Enroll" not in text, f"{name}: spelled 'enroll' (the code says 'enrol')"


def test_train_help_names_the_real_default_config():
    from mvector.cli.train import build_parser

    text = " ".join(build_parser("mvector train").format_help().split())
    assert "default: ecapa_tdnn" in text


@pytest.mark.parametrize("name,parser", PARSERS, ids=IDS)
def test_use_gpu_has_the_one_default(name, parser):
    """--use_gpu, wherever a command has it, defaults to None: CUDA when available (utils.device.select_device)."""
    for action in parser._actions:
        if "--use_gpu" in action.option_strings:
            assert action.default is None, f"{name} --use_gpu defaults to {action.default!r}"
            assert "when CUDA is available" in action.help


def test_python_entry_points_have_the_one_use_gpu_default():
    import inspect

    from mvector.demo import run_demo
    from mvector.evaluation.model_eval import evaluate_model_folder
    from mvector.inference.predictor import MVectorPredictor
    from mvector.training.distributed import DistContext
    from mvector.training.trainer import MVectorTrainer

    entry_points = (run_demo, evaluate_model_folder, MVectorPredictor.__init__, DistContext.from_env)
    for func in (*entry_points, MVectorTrainer.__init__):
        assert inspect.signature(func).parameters["use_gpu"].default is None, func.__qualname__


def test_top_level_config_keys_are_accepted_as_flags():
    from mvector.cli.common import base_parser, parse_args

    _, ov = parse_args(base_parser("t"), ["--use_model=TDNN", "--use_loss=AM", "--model_conf.channels=64"])
    assert ov == {"use_model": "TDNN", "use_loss": "AM", "model_conf.channels": "64"}
