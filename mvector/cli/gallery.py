"""``mvector gallery``: copy galleries, API keys and the audit log between stores (a folder or a PostgreSQL URL).

    mvector gallery copy audio_db/ postgresql://app:secret@db.local:5432/voices      # folder -> PostgreSQL
    mvector gallery copy postgresql://app:secret@db.local:5432/voices backup_db/     # and back
    mvector gallery copy audio_db/ postgresql://... --gallery default --no-keys       # one gallery, no keys

Each gallery is read in one consistent state (writers to the source wait meanwhile), written to the target in one
transaction, then both sides are compared: counts and a SHA-256 over the sorted (gallery, name, utterance) rows,
printed per gallery. Refused with one line: a target gallery made by another model, a target gallery that already
holds speakers, a key id the target holds with other content, a gallery with kept recordings (unless
--without_audio: the copy carries embeddings, the files stay where they are).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mvector.cli.common import CliParser, HelpFormatter, add_flag, run_cli

__all__ = ["main", "build_parser"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``mvector gallery``.

    >>> args = build_parser().parse_args(["copy", "a/", "postgresql://h/db", "--gallery", "x", "--gallery", "y"])
    >>> args.source, args.target, args.gallery, args.keys
    ('a/', 'postgresql://h/db', ['x', 'y'], True)
    """
    parser = CliParser(
        prog=prog,
        description="Copy galleries, API keys and the audit log between stores (a folder or a postgresql:// URL).",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{copy}")
    copy = sub.add_parser(
        "copy", help="copy galleries with their keys and audit log", description=__doc__.split("\n", 2)[2],
        formatter_class=HelpFormatter,
    )
    copy.add_argument("source", help="the store to copy from: a database folder or a postgresql:// URL")
    copy.add_argument("target", help="the store to copy to: a database folder or a postgresql:// URL")
    copy.add_argument(
        "--gallery", action="append", default=None, metavar="NAME",
        help="a gallery to copy (repeat for several; default: every gallery of the source)",
    )
    add_flag(copy, "--keys", default=True, help="also copy the API keys and the audit log")
    add_flag(copy, "--without_audio", default=False, help="copy galleries that keep recordings, without the files")
    return parser


def _run(args: argparse.Namespace) -> None:
    from mvector.store import open_store, redact
    from mvector.store.copy import copy_store

    source, target = open_store(args.source), open_store(args.target)
    try:
        source.check()
        target.check()
        report = copy_store(source, target, args.gallery, keys=args.keys, without_audio=args.without_audio)
    finally:
        source.close()
        target.close()
    for g in report.galleries:
        print(
            f"gallery {g.gallery}: {g.speakers} speakers, {g.utterances} utterances, {g.cohort} cohort rows; "
            f"sha256 {g.sha256} on both sides"
        )
    if args.keys:
        print(f"keys: {report.keys} copied, {report.keys_skipped} already there; audit rows: {report.audit_rows}")
    print(f"copied {redact(str(args.source))} -> {redact(str(args.target))}")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``mvector gallery ...``; returns the exit status (2: a refused copy, with one line saying why)."""
    parser = build_parser(prog)
    return run_cli(lambda a: _run(parser.parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
