"""The embedded default: synthesize speakers, train a small model on the CPU, evaluate, print the EER.

Run it with ``python -m mvector.demo`` (under a minute on 2 CPU cores). It needs no downloaded data: the
speakers come from :mod:`mvector.data.synthetic`. The untrained model's EER on the same trials is printed next
to the trained one.

>>> cfg = demo_config("train.txt", "test.txt")
>>> cfg["use_model"], cfg["model_conf"]["channels"]
('EcapaTdnn', 128)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mvector.utils.threads import apply_thread_policy, prepare_environment

if __name__ == "__main__":  # before torch is imported: OpenMP threads that wait sleep instead of spinning
    prepare_environment()

import torch  # noqa: E402

from mvector.config import load_config  # noqa: E402
from mvector.data.synthetic import generate_corpus  # noqa: E402
from mvector.utils.files import atomic_write_json  # noqa: E402

__all__ = ["demo_config", "run_demo", "tiny_checkpoint"]


def demo_config(train_list: str, test_list: str, max_epoch: int = 20) -> dict[str, Any]:
    """The demo's configuration: the bundled ``ecapa_tdnn`` recipe (64-bin mel, AAM, its augmentation) with a
    128-channel model and 2 s crops, sized for a CPU."""
    return load_config(
        "ecapa_tdnn",
        overrides={
            "dataset_conf.train_list": train_list,
            "dataset_conf.test_list": test_list,
            "dataset_conf.max_duration": 2.0,
            "dataset_conf.eval_batch_size": 16,
            "model_conf.channels": 128,
            "train_conf.max_epoch": max_epoch,
            "train_conf.log_interval": 20,
            "train_conf.eval_interval": max(1, max_epoch // 3),
            "train_conf.log_backend": "none",
        },
    )


def tiny_checkpoint(directory: str | Path, threshold: float = 0.5, seed: int = 0) -> Path:
    """Write an untrained, tiny TDNN checkpoint folder (with a ``result.json`` threshold) for examples and tests.

    >>> import tempfile
    >>> sorted(p.name for p in tiny_checkpoint(tempfile.mkdtemp()).iterdir())[:3]
    ['config.yml', 'head.pt', 'model.pt']
    """
    from mvector.build import build_embedding_model
    from mvector.checkpoint import save_checkpoint
    from mvector.models import build_head

    conf = load_config(
        "tdnn",
        overrides={
            "feature_conf.num_mel_bins": 40,
            "model_conf.channels": 32,
            "model_conf.embd_dim": 32,
            "dataset_conf.num_speakers": 4,
        },
    )
    torch.manual_seed(seed)
    model = build_embedding_model(conf)
    head = build_head("AAM", model.backbone.embd_dim, 4)
    path = save_checkpoint(
        Path(directory) / "best_model",
        model_state=model.backbone.state_dict(),
        head_state=head.state_dict(),
        config=conf,
        epoch=0,
        step=0,
        best_eer=None,
    )
    atomic_write_json(path / "result.json", {"threshold": threshold})
    return path


def run_demo(
    work_dir: str | Path = "demo_output",
    max_epoch: int = 20,
    train_speakers: int = 40,
    utterances_per_speaker: int = 12,
    test_speakers: int = 16,
    use_gpu: bool | None = None,
) -> dict[str, Any]:
    """Synthesize a corpus under ``work_dir``, train, evaluate; returns untrained and trained metrics."""
    from mvector.evaluation.evaluator import EvalSettings, Evaluator
    from mvector.training.trainer import MVectorTrainer

    work = Path(work_dir)
    started = time.perf_counter()
    train_list = generate_corpus(
        work / "train", train_speakers, utterances_per_speaker, seed=0, min_duration=2.0, max_duration=4.0
    )
    test_list = generate_corpus(work / "test", test_speakers, 8, seed=1, min_duration=2.0, max_duration=4.0)
    print(f"synthesized {train_speakers} training and {test_speakers} test speakers in {work}", flush=True)
    trainer = MVectorTrainer(demo_config(str(train_list), str(test_list), max_epoch), use_gpu=use_gpu)
    torch.manual_seed(0)
    untrained_model = trainer.build_embedding_model().to(trainer.ctx.device).eval()
    settings = EvalSettings.from_dataset_conf(trainer.configs["dataset_conf"])
    untrained = Evaluator(untrained_model, settings, progress=False).evaluate(test_list=test_list)
    print(f"untrained model: EER {untrained['eer']:.4f}", flush=True)
    # The demo owns its output folder: a second run replaces the first one's checkpoints.
    trained = trainer.train(save_model_path=work / "models", overwrite=True)
    summary = {
        "untrained_eer": round(untrained["eer"], 4),
        "trained_eer": round(trained["eer"], 4),
        "trained_min_dcf": round(trained["min_dcf"], 4),
        "threshold": round(trained["threshold"], 4),
        "num_trials": trained["num_trials"],
        "model_dir": trained["model_dir"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"EER untrained {summary['untrained_eer']:.4f} -> trained {summary['trained_eer']:.4f}", flush=True)
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``python -m mvector.demo [--work_dir DIR] [--max_epoch N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="demo_output")
    parser.add_argument("--max_epoch", type=int, default=20, help="training epochs (20: about 80 s on 2 idle cores)")
    parser.add_argument(
        "--use_gpu", action=argparse.BooleanOptionalAction, default=None,
        help="train on CUDA (default: when CUDA is available)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (None: the usable CPUs not busy)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    apply_thread_policy(args.threads, verbose=True)
    run_demo(args.work_dir, max_epoch=args.max_epoch, use_gpu=args.use_gpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
