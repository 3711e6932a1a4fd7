"""``mvector samples DIR``: write the sample recordings the README's examples use (synthetic speakers).

    mvector samples samples/ && cd samples
    mvector contrast --model_path MODEL --audio_path1 a.wav --audio_path2 b.wav
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mvector.cli.common import CliParser, HelpFormatter, run_cli

__all__ = ["main", "build_parser"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``mvector samples``.

    >>> build_parser("mvector samples").parse_args(["out"]).seed
    0
    """
    parser = CliParser(
        prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("folder", help="where to write the recordings (created)")
    parser.add_argument("--seed", type=int, default=0, help="other seeds give other voices")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``mvector samples``; returns the exit status (2 on a bad input)."""
    parser = build_parser(prog)

    def body(args_list: Sequence[str] | None) -> None:
        args = parser.parse_args(args_list)
        from mvector.data.samples import write_samples

        written = write_samples(args.folder, seed=args.seed)
        print(f"wrote {len(written)} files to {args.folder}: a.wav b.wav c.wav alice1-3.wav bob1-3.wav alice.wav "
              "who.wav unknown.wav unknown1-2.wav meeting.wav, pairs/ and my_pairs.txt (trials for mvector calibrate)")

    return run_cli(body, argv)


if __name__ == "__main__":
    sys.exit(main())
