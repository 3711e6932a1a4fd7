"""``mvector keys``: create, list and revoke the API keys of the HTTP service; read its audit log.

    mvector keys create --audio_db_path audio_db --scope admin --name ops   # the key is on the LAST line
    mvector keys list --audio_db_path audio_db
    mvector keys revoke --audio_db_path audio_db 3f2a9c01b7d4
    mvector keys audit --audio_db_path audio_db --limit 20
    mvector keys audit --audio_db_path audio_db --outcome refused   # refused requests, counted per hour
    mvector keys create --audio_db_path postgresql://app:pw@db/voices --scope write --galleries house office

Keys live with the galleries: in ``<audio_db_path>/service.sqlite`` for a folder, in the database of a
``postgresql://`` URL for replicas (only their SHA-256 is stored; a lost key cannot be shown again: revoke it and
create another). Scopes: read (embed, verify, identify, list), write (also enrol and delete), admin (also keys and
the audit log). --galleries limits a read or write key to those galleries (default: every gallery; an admin key
reaches every gallery). A revoked key stops working on every running replica's next request.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from mvector.cli.common import CliParser, HelpFormatter, add_flag, run_cli
from mvector.service.keys import OUTCOMES

__all__ = ["main", "build_parser"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``mvector keys``.

    >>> build_parser().parse_args(["create", "--scope", "read"]).scope
    'read'
    """
    fmt = HelpFormatter
    parser = CliParser(
        prog=prog,
        description="Create, list and revoke the API keys of the HTTP service; read its audit log.",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{create,list,revoke,audit}")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=fmt)
        p.add_argument(
            "--audio_db_path", default="audio_db/", help="speaker database folder or postgresql:// URL the service uses"
        )
        return p

    create = add("create", "create a key and print it (on the last line)")
    create.add_argument("--scope", required=True, choices=["read", "write", "admin"], help="what the key may do")
    create.add_argument("--name", default="", help="a label: who or what uses the key")
    create.add_argument(
        "--galleries", nargs="+", metavar="GALLERY", default=None,
        help="the only galleries the key may use (read or write keys; default: every gallery)",
    )
    listing = add("list", "list keys (ids, names, scopes; never the keys)")
    add_flag(listing, "--active", default=False, help="only keys not revoked")
    add_flag(listing, "--json", default=False, help="one JSON object per key")
    revoke = add("revoke", "revoke a key by its id (or the key itself)")
    revoke.add_argument("key_id", help="the id shown by 'mvector keys list'")
    audit = add("audit", "print the audit log of writes, newest first")
    audit.add_argument("--limit", type=int, default=50, help="entries to print")
    audit.add_argument(
        "--outcome",
        default="done",
        choices=list(OUTCOMES),
        help="writes that happened, refused requests (aggregated: one row per key, client, action and status "
        "per hour, with a count), or both",
    )
    add_flag(audit, "--json", default=False, help="one JSON object per entry")
    return parser


def _run(args: argparse.Namespace) -> None:
    from mvector.service.keys import KeyStore, escape_text

    with KeyStore(args.audio_db_path, create=args.command == "create") as store:
        if args.command == "create":
            info, token = store.create(args.scope, args.name, created_by="cli", galleries=args.galleries)
            where = f", galleries {', '.join(info.galleries)}" if info.galleries else ""
            print(f"created key {info.key_id} (scope {info.scope}{', name ' + info.name if info.name else ''}{where})")
            print(f"stored hashed in {store.path}; it is shown only now:", flush=True)
            print(token)
        elif args.command == "list":
            keys = store.list(include_revoked=not args.active)
            if args.json:
                for k in keys:
                    print(json.dumps(k.as_dict()))
            elif not keys:
                print("(no keys)")
            else:
                print(f"{'id':<14}{'scope':<7}{'created':<26}{'revoked':<26}{'galleries':<20}name")
                for k in keys:
                    d = k.as_dict()
                    galleries = ",".join(k.galleries) if k.galleries else "*"
                    revoked = d["revoked"] or "-"
                    print(f"{k.key_id:<14}{k.scope:<7}{d['created']:<26}{revoked:<26}{galleries:<20}{k.name}")
        elif args.command == "revoke":
            info = store.revoke(args.key_id)
            print(f"revoked key {info.key_id} (scope {info.scope}) at {info.as_dict()['revoked']}")
        else:
            for e in store.audit_log(args.limit, outcome=args.outcome):
                # stored text is escaped; escaping again on output also covers rows written by older versions
                d = {k: escape_text(v, backslash=False) if isinstance(v, str) else v for k, v in e.as_dict().items()}
                if args.json:
                    print(json.dumps(d, ensure_ascii=True))
                else:
                    who = f"{d['key_id'] or '-'}({d['key_name'] or ''})"
                    times = f" x{e.count} until {d['last']}" if e.count > 1 else ""
                    where = f"  [{d['gallery']}]" if d["gallery"] else ""
                    print(
                        f"{d['time']}  {who:<28} {d['action']:<15} {d['target'] or '-':<24} {e.status}  "
                        f"{d['client'] or ''}{times}{where}  @{d['replica'] or '-'}"
                    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``mvector keys ...``; returns the exit status."""
    parser = build_parser(prog)
    return run_cli(lambda a: _run(parser.parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
