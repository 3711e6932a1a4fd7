"""Evaluate a checkpoint: EER, minDCF (0.01 and 0.05), threshold, TPR/FPR; writes result.json into it.

Example:
    python eval.py --configs ecapa_tdnn --use_gpu False --resume_model models/EcapaTdnn_Fbank/best_model
"""

import json
import sys

from mvector.cli.common import base_parser, parse_args, run_cli


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume_model", default="models/EcapaTdnn_Fbank/best_model", help="checkpoint folder")
    parser.add_argument("--save_image_path", default=None, help="folder for the DET plot and score histogram")
    parser.add_argument("--cohort_list", default=None, help="path<TAB>label list of cohort utterances for AS-norm")
    parser.add_argument("--asnorm_top_k", type=int, default=300, help="AS-norm: top cohort scores used")
    args, overrides = parse_args(parser, argv)
    from mvector.trainer import MVectorTrainer

    trainer = MVectorTrainer(args.configs, use_gpu=args.use_gpu, overrides=overrides)
    result = trainer.evaluate(
        resume_model=args.resume_model,
        save_image_path=args.save_image_path,
        cohort_list=args.cohort_list,
        asnorm_top_k=args.asnorm_top_k,
    )
    print(
        f"EER {result['eer']:.5f}  minDCF(0.01) {result['min_dcf']:.5f}  minDCF(0.05) {result['min_dcf_0.05']:.5f}  "
        f"threshold {result['threshold']:.5f}  TPR {result['tpr']:.4f}  FPR {result['fpr']:.4f}  "
        f"trials {result['num_trials']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(run_cli(main))
