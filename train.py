"""Train a speaker-embedding model: `python train.py --configs ecapa_tdnn` (or under torchrun for DDP).

Examples:
    python train.py --configs ecapa_tdnn --use_gpu False --train_conf.max_epoch=2
    torchrun --nproc_per_node=4 train.py --configs ecapa_tdnn
"""

import sys

from mvector.cli.common import base_parser, parse_args, run_cli


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--save_model_path", default="models/", help="checkpoint root folder")
    parser.add_argument("--resume_model", default=None, help="checkpoint folder to continue from exactly")
    parser.add_argument("--pretrained_model", default=None, help="checkpoint folder to initialise matching weights")
    parser.add_argument("--augment_conf_path", default=None, help="augmentation YAML (configs/augmentation.yml)")
    args, overrides = parse_args(parser, argv)
    from mvector.trainer import MVectorTrainer

    trainer = MVectorTrainer(
        args.configs, use_gpu=args.use_gpu, overrides=overrides, augment_conf_path=args.augment_conf_path
    )
    result = trainer.train(
        save_model_path=args.save_model_path,
        resume_model=args.resume_model,
        pretrained_model=args.pretrained_model,
    )
    if trainer.ctx.is_main and "eer" in result:
        print(f"final EER {result['eer']:.4f}  minDCF {result['min_dcf']:.4f}  checkpoints in {result['model_dir']}")
    trainer.ctx.close()


if __name__ == "__main__":
    sys.exit(run_cli(main))
