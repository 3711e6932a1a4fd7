"""Training callbacks: console logging, scalar logs (VisualDL / TensorBoard), evaluation and checkpointing.

The trainer calls each callback at fixed points (:class:`Callback`); a test or a benchmark can pass its own to
observe steps and timing without touching the trainer. Only rank 0 gets the logging, evaluation and checkpoint
callbacks under ``torchrun``.

>>> class CountSteps(Callback):
...     steps = 0
...     def on_step_end(self, trainer, info):
...         self.steps += 1
>>> CountSteps().steps
0
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mvector.checkpoint import (
    capture_rng_state,
    clone_checkpoint,
    prune_epoch_checkpoints,
    recorded_eer,
    remove_checkpoint,
    repair_model_folder,
    save_checkpoint,
)
from mvector.data.lists import load_utterances
from mvector.errors import ConfigError
from mvector.evaluation.evaluator import EvalSettings, Evaluator, default_num_workers
from mvector.evaluation.score_norm import SCORE_NORM_FILE, ScoreNorm, check_score_norm_conf, cohort_subset

__all__ = [
    "Callback",
    "ConsoleLogger",
    "ScalarLogger",
    "EvaluationCallback",
    "CheckpointCallback",
    "RUN_FOLDERS",
]

#: Checkpoint folders a run leaves in its model folder (plus ``epoch_N``).
RUN_FOLDERS = ("last_model", "best_model")


class Callback:
    """Hooks the trainer calls; every method is optional. ``trainer`` is the :class:`~mvector.training.trainer.
    MVectorTrainer`, ``info`` its :class:`~mvector.training.trainer.StepInfo`."""

    def on_train_start(self, trainer: Any) -> None:
        """Before the first epoch (after data, model, optimiser and restore)."""

    def on_step_end(self, trainer: Any, info: Any) -> None:
        """After each optimiser step (``info`` holds device tensors: reading them waits for the device)."""

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        """After each epoch; ``record`` (the epoch's history entry) may be extended, e.g. with metrics."""

    def on_train_end(self, trainer: Any, history: list[dict[str, Any]]) -> None:
        """After the last epoch."""


class ConsoleLogger(Callback):
    """Prints loss, accuracy, learning rate, margin, samples/s, data wait and ETA every ``log_interval`` steps and
    at least every ``log_seconds`` seconds (so a slow CPU epoch is never silent)."""

    def __init__(self, log_interval: int, log_seconds: float) -> None:
        self.log_interval = max(1, int(log_interval))
        self.log_seconds = float(log_seconds)
        self._last_log = time.perf_counter()

    def on_step_end(self, trainer: Any, info: Any) -> None:
        now = time.perf_counter()
        due = info.step % self.log_interval == 0 or info.step == info.steps or now - self._last_log >= self.log_seconds
        if not due:
            return
        self._last_log = now
        trainer.check_finite(info)
        elapsed = max(now - info.epoch_start, 1e-9)
        rate = info.samples * trainer.ctx.world_size / elapsed
        remaining_steps = info.steps - info.step + (info.max_epoch - info.epoch) * info.steps
        remaining = remaining_steps * elapsed / max(info.step, 1)
        mean_loss = float(info.loss_sum) / max(info.samples, 1)
        acc = float(info.correct) / max(info.samples, 1)
        trainer.log(
            f"epoch {info.epoch}/{info.max_epoch} step {info.step}/{info.steps}  loss {mean_loss:.4f}  "
            f"acc {acc:.3f}  lr {info.lr:.2e}  margin {info.margin:.3f}  {rate:.1f} samples/s  "
            f"data wait {100 * info.wait_time / elapsed:.0f}%  ETA {time.strftime('%H:%M:%S', time.gmtime(remaining))}"
        )
        info.logged = {"loss": mean_loss, "accuracy": acc, "lr": info.lr, "margin": info.margin}


class ScalarLogger(Callback):
    """Writes ``Train/*`` scalars at each console log and ``Test/*`` scalars after evaluation."""

    def __init__(self, backend: str, log_dir: str | os.PathLike) -> None:
        self.writer = _make_writer(backend, str(log_dir))

    def on_step_end(self, trainer: Any, info: Any) -> None:
        if self.writer is None or not info.logged:
            return
        for key, tag in (("loss", "Loss"), ("accuracy", "Accuracy"), ("lr", "lr"), ("margin", "margin")):
            self.writer.add_scalar(f"Train/{tag}", info.logged[key], info.global_step)

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        if self.writer is None or "eer" not in record:
            return
        for key in ("eer", "min_dcf", "threshold"):
            self.writer.add_scalar(f"Test/{key}", record[key], epoch)

    def on_train_end(self, trainer: Any, history: list[dict[str, Any]]) -> None:
        if self.writer is not None:
            self.writer.close()


class EvaluationCallback(Callback):
    """Evaluates the model being trained every ``eval_interval`` epochs and at the last one (rank 0)."""

    def __init__(self, eval_interval: int, progress: bool = True) -> None:
        self.eval_interval = int(eval_interval)
        self.progress = progress

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        due = self.eval_interval > 0 and epoch % self.eval_interval == 0 or epoch == trainer.max_epoch
        if not due:
            return
        conf = trainer.configs
        ds = conf["dataset_conf"]
        workers = default_num_workers(trainer.ctx.device, ds["num_workers"], cap=4)
        model = trainer.embedding_model.eval()
        evaluator = Evaluator(model, EvalSettings.from_dataset_conf(ds, workers), self.progress, trainer.log)
        score_norm = self.fit_score_norm(trainer, evaluator)
        metrics = evaluator.evaluate(
            test_list=ds["test_list"],
            trials_list=ds["trials_list"],
            trials_root=ds["trials_root"],
            num_eval_trials=ds["num_eval_trials"],
            score_norm=score_norm,
        )
        if score_norm is not None:
            metrics["score_type"] = "as_norm_model"
            sc = check_score_norm_conf(trainer.configs.get("score_norm_conf"))
            metrics["score_norm"] = {"cohort": f"training {sc['cohort']}", "size": int(score_norm.cohort.shape[0]),
                                     "speeds": sc["cohort_speeds"], "top_k": score_norm.top_k,
                                     "centre": bool(np.any(score_norm.mean)),
                                     "whiten": score_norm.whitening is not None}  # fmt: skip
        trainer.score_norm = (epoch, score_norm)
        trainer.log(
            f"epoch {epoch}: EER {metrics['eer']:.4f}  minDCF {metrics['min_dcf']:.4f}  "
            f"threshold {metrics['threshold']:.4f}"
        )
        record.update(metrics)


    @staticmethod
    def fit_score_norm(trainer: Any, evaluator: Evaluator) -> ScoreNorm | None:
        """The score normalisation of ``score_norm_conf`` fitted on the training list with the model as it is
        now (``None`` for ``cohort: none``): up to ``max_per_speaker`` unaugmented clips of every speaker, each
        played at every speed of ``cohort_speeds`` (a clip at another speed counts as another speaker, as the
        speed augmentation's ``speaker_per_speed`` trains it)."""
        sc = check_score_norm_conf(trainer.configs.get("score_norm_conf"))
        if sc["cohort"] == "none":
            return None
        utts = load_utterances(trainer.configs["dataset_conf"]["train_list"])
        keep = cohort_subset([u.label for u in utts], sc["max_per_speaker"])
        base = np.array([utts[i].label for i in keep], dtype=np.int64)
        stride = int(base.max()) + 1 if base.size else 1
        vectors, labels = [], []
        for k, speed in enumerate(sc["cohort_speeds"]):
            desc = "cohort" if speed == 1.0 else f"cohort at speed {speed:g}"
            emb = evaluator.embed_paths([utts[i].path for i in keep], desc=desc, speed=speed)
            vectors.append(emb.vectors[emb.ok])
            labels.append(base[emb.ok] + k * stride)
        return ScoreNorm.fit(
            np.concatenate(vectors), np.concatenate(labels), centre=sc["centre"] or sc["whiten"],
            whiten=sc["whiten"], cohort=sc["cohort"], top_k=sc["top_k"],
        )  # fmt: skip


class CheckpointCallback(Callback):
    """Saves ``best_model`` when the EER improves (ties included), ``last_model`` and ``epoch_N`` after every
    epoch, in that order (see :mod:`mvector.checkpoint` for why), with ``result.json`` inside evaluated
    weights, and prunes ``epoch_N`` to ``keep_last_epochs``.

    At the start of training it repairs what a killed run left in the model folder (:func:`~mvector.checkpoint.
    repair_model_folder`); on resume it also writes a missing ``epoch_N`` snapshot of ``last_model``, puts back
    into ``best_model`` a better evaluated checkpoint still on disk, and takes ``best_model``'s EER as the one a
    later epoch must beat. A new run refuses a model folder that holds another run's checkpoints unless
    ``overwrite`` is set, in which case that run's checkpoints are removed first: two runs never mix in one folder.
    """

    def __init__(self, model_dir: str | os.PathLike, keep_last: int, overwrite: bool = False) -> None:
        self.model_dir = Path(model_dir)
        self.keep_last = int(keep_last)
        self.overwrite = bool(overwrite)

    def on_train_start(self, trainer: Any) -> None:
        for note in repair_model_folder(self.model_dir):
            trainer.log(f"note: {note}")
        if trainer.resumed_from is not None:
            self._restore_snapshot(trainer)
            self._restore_best(trainer)
            return
        existing = [p for p in self.model_dir.glob("*") if p.name in RUN_FOLDERS or p.name.startswith("epoch_")]
        if not existing:
            return
        if not self.overwrite:
            names = ", ".join(sorted(p.name for p in existing))
            raise ConfigError(
                f"{self.model_dir} holds the checkpoints of another run ({names}); "
                "pass --resume_model to continue it, --overwrite to replace it, or another --save_model_path"
            )
        for path in existing:
            remove_checkpoint(path)
        trainer.log(f"note: removed the previous run's checkpoints from {self.model_dir} (--overwrite)")

    def _restore_snapshot(self, trainer: Any) -> None:
        """A kill between ``last_model`` and its ``epoch_N`` snapshot: write the snapshot now."""
        last = self.model_dir / "last_model"
        if self.keep_last <= 0 or not (last / "state.json").is_file():
            return
        try:
            epoch = int(json.loads((last / "state.json").read_text(encoding="utf-8"))["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # damaged: a run resumed from another folder; this one is left as it is
        snapshot = self.model_dir / f"epoch_{epoch}"
        if not snapshot.exists():
            clone_checkpoint(last, snapshot)
            trainer.log(f"note: wrote the missing {snapshot.name} (a copy of last_model, epoch {epoch})")

    def _restore_best(self, trainer: Any) -> None:
        """``best_model`` holds the best evaluated weights on disk, and its EER is the one to beat."""
        best_dir = self.model_dir / "best_model"
        candidates = [self.model_dir / "last_model", *sorted(self.model_dir.glob("epoch_*"))]
        scored = [(eer, path) for path in candidates if (eer := recorded_eer(path, own_only=True)) is not None]
        current = recorded_eer(best_dir) if (best_dir / "state.json").is_file() else None
        if scored:
            eer, path = min(scored, key=lambda item: item[0])
            if current is None or eer < current:
                clone_checkpoint(path, best_dir)
                was = "missing" if current is None else f"EER {current:.4f}"
                trainer.log(f"note: best_model ({was}) replaced by {path.name} (EER {eer:.4f}), the best on disk")
                current = eer
        if current is not None and current != trainer.best_eer:
            trainer.log(
                f"note: best_model records EER {current:.4f} (the resumed checkpoint: {trainer.best_eer}); "
                "a later epoch replaces it only when it does at least as well"
            )
            trainer.best_eer = current

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        trainer.check_finite(None)
        evaluated = "eer" in record
        improved = evaluated and (trainer.best_eer is None or record["eer"] <= trainer.best_eer)
        if improved:
            trainer.best_eer = record["eer"]
        state = dict(
            model_state=trainer.embedding_model.backbone.state_dict(),
            head_state=trainer.head.state_dict(),
            optimizer_state=trainer.optimizer.state_dict(),
            scheduler_state=trainer.scheduler.state_dict(),
            scaler_state=trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None,
            rng_state=capture_rng_state(),
            config=trainer.configs,
            epoch=epoch,
            step=trainer.global_step,
            best_eer=trainer.best_eer,
            extra={"num_speakers": trainer.num_speakers},
            result={**_metrics_of(record), "epoch": epoch} if evaluated else None,
        )
        norm_epoch, score_norm = getattr(trainer, "score_norm", (None, None))
        if score_norm is not None and norm_epoch == epoch:  # the cohort fitted on these weights goes with them
            state["side_files"] = {SCORE_NORM_FILE: score_norm.to_bytes()}
        last = self.model_dir / "last_model"
        if improved:  # best_model first: nothing may record the new best EER before its weights are saved
            clone_checkpoint(save_checkpoint(self.model_dir / "best_model", **state), last)
        else:
            save_checkpoint(last, **state)
        if self.keep_last > 0:
            clone_checkpoint(last, self.model_dir / f"epoch_{epoch}")
        prune_epoch_checkpoints(self.model_dir, self.keep_last)


def _metrics_of(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("epoch", "skipped", "seconds", "train_loss")}


class _VisualDLWriter:
    """Adapts VisualDL's ``LogWriter.add_scalar(tag, value, step)`` keyword style to a common interface."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag=tag, value=float(value), step=int(step))

    def close(self) -> None:
        self._writer.close()


def _make_writer(backend: str, log_dir: str) -> Any:
    if backend == "none":
        return None
    if backend == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=log_dir)
    try:
        from visualdl import LogWriter
    except ImportError as err:  # pragma: no cover - visualdl is a declared dependency
        raise ConfigError("train_conf.log_backend is visualdl but visualdl is not installed") from err
    return _VisualDLWriter(LogWriter(logdir=log_dir))
