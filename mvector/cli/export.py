r"""Export a trained checkpoint to a waveform-to-embedding inference folder (TorchScript and/or ONNX).

Example:
    mvector export --model_path models/EcapaTdnn_MelSpectrogram/best_model \
        --output_dir exported/EcapaTdnn_MelSpectrogram
    mvector contrast --model_path exported/EcapaTdnn_MelSpectrogram --audio_path1 a.wav --audio_path2 b.wav

The folder holds model.ts, model.onnx, config.yml (the checkpoint's) and meta.json (fingerprint, threshold,
embd_dim, sample_rate, library_version). ONNX needs: pip install "mvector[export]".
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from mvector.cli.common import CliParser, HelpFormatter, add_flag, add_threads_argument, apply_threads, run_cli
from mvector.config import DEFAULT_MODEL_PATH


def build_parser(prog: str | None = None) -> CliParser:
    """The ``mvector export`` parser.

    >>> build_parser("mvector export").prog
    'mvector export'
    """
    parser = CliParser(
        prog=prog,
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter,
        epilog=__doc__.split("\n", 1)[1].strip(),
    )
    parser.add_argument("--model_path", default=DEFAULT_MODEL_PATH, help="trainer checkpoint folder")
    parser.add_argument("--output_dir", required=True, help="folder to write the exported model into")
    parser.add_argument(
        "--formats", nargs="+", default=["torchscript", "onnx"], choices=["torchscript", "onnx"], help="what to write"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer: STFT)")
    add_flag(parser, "--json", default=False, help="print meta.json as one JSON line")
    add_threads_argument(parser)
    return parser


def _main(argv=None, prog=None) -> None:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    apply_threads(args)
    from mvector.export import export_checkpoint

    out = export_checkpoint(args.model_path, args.output_dir, formats=args.formats, opset=args.opset)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    if args.json:
        print(json.dumps(meta))
    else:
        files = ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
        threshold = "none (not evaluated)" if meta["threshold"] is None else f"{meta['threshold']:.5f}"
        print(f"exported {meta['model']} to {out}: {files}; embd_dim {meta['embd_dim']}, threshold {threshold}")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command; returns the exit status (an mvector error prints one line and gives 2)."""
    return run_cli(lambda args: _main(args, prog), argv)


if __name__ == "__main__":
    sys.exit(main())
