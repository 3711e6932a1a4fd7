"""Train a speaker-embedding model: `mvector train --configs ecapa_tdnn` (or under torchrun for DDP).

With --resume_model and no --configs, the run continues with the configuration stored in the checkpoint (its data
lists, augmentation and schedule), with any --section.key=value overrides on top (e.g. a larger
--train_conf.max_epoch: the learning-rate schedule is then re-planned over the new length).

Examples:
    mvector train --configs ecapa_tdnn --no-use_gpu --train_conf.max_epoch=2
    mvector train --resume_model models/EcapaTdnn_MelSpectrogram/last_model --train_conf.max_epoch=10
    torchrun --nproc_per_node=4 train.py --configs ecapa_tdnn
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from mvector.cli.common import add_flag, apply_threads, base_parser, parse_args, run_cli
from mvector.config import DEFAULT_CONFIG


def build_parser(prog: str | None = None):
    """The argument parser of ``mvector train`` / ``train.py``."""
    parser = base_parser(
        __doc__.splitlines()[0], prog=prog, default_configs=None,
        configs_note=f"default: {DEFAULT_CONFIG}; with --resume_model, the configuration stored in the checkpoint",
    )
    parser.description = __doc__
    parser.add_argument("--save_model_path", default="models/", help="checkpoint root folder")
    parser.add_argument("--resume_model", default=None, help="checkpoint folder to continue from exactly")
    parser.add_argument("--pretrained_model", default=None, help="model folder to initialise matching weights from")
    parser.add_argument(
        "--augment_conf_path", default=None, help="augmentation YAML (mvector/configs/augmentation.yml): augment_conf"
    )
    add_flag(
        parser, "--overwrite", default=False,
        help="replace the checkpoints of another run in the model folder",
    )
    return parser


def _main(argv=None, prog=None) -> None:
    args, overrides = parse_args(build_parser(prog), argv)
    apply_threads(args, verbose=os.environ.get("RANK", "0") == "0")  # one line, from rank 0 under torchrun
    from mvector.training.trainer import MVectorTrainer

    configs = args.configs
    if configs is None:
        configs = DEFAULT_CONFIG
        if args.resume_model:
            from mvector.checkpoint import load_checkpoint

            configs = load_checkpoint(args.resume_model).config
    trainer = MVectorTrainer(
        configs, use_gpu=args.use_gpu, overrides=overrides, augment_conf_path=args.augment_conf_path
    )
    result = trainer.train(
        save_model_path=args.save_model_path,
        resume_model=args.resume_model,
        pretrained_model=args.pretrained_model,
        overwrite=args.overwrite,
    )
    if trainer.ctx.is_main and "eer" in result:
        print(f"final EER {result['eer']:.4f}  minDCF {result['min_dcf']:.4f}  checkpoints in {result['model_dir']}")
    trainer.ctx.close()


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command; returns the exit status (an mvector error prints one line and gives 2)."""
    return run_cli(lambda args: _main(args, prog), argv)


if __name__ == "__main__":
    sys.exit(main())
