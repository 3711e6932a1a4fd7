"""MVectorTrainer: YAML-driven training (CPU, one GPU, or torchrun DDP) and evaluation.

>>> trainer = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides={"model_conf.channels": "64"})
>>> trainer.model_name
'EcapaTdnn_Fbank'

Train with ``trainer.train(save_model_path="models/")``; evaluate a checkpoint with
``trainer.evaluate(resume_model="models/EcapaTdnn_Fbank/best_model")``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from mvector import __version__
from mvector.augment import build_augmenter, load_augmentation_config, spec_augment_kwargs
from mvector.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_matching_weights,
    prune_epoch_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from mvector.config import load_config
from mvector.data.dataset import EvalDataset, TrainDataset, collate_batch
from mvector.data.lists import check_num_speakers, infer_num_speakers, load_utterances
from mvector.distributed import DistContext
from mvector.embedding import length_batches
from mvector.errors import CheckpointError, ConfigError, DataListError
from mvector.features import SpecAugment, build_featurizer
from mvector.losses import CEHead, MarginScheduler, build_head
from mvector.metrics import all_pairs_metrics, evaluate_scores
from mvector.models import EmbeddingModel, build_backbone
from mvector.optim import build_optimizer, build_scheduler
from mvector.scoring import (
    as_norm,
    cosine_score_trials,
    generate_trials,
    read_trials,
    save_det_plot,
    save_score_histogram,
)

__all__ = ["MVectorTrainer", "SpeakerModel", "MODEL_SECTIONS"]

logger = logging.getLogger("mvector")

#: Config parts that define the network; a checkpoint's values win over a user's for these.
MODEL_SECTIONS = ("use_model", "preprocess_conf", "feature_conf", "model_conf")


class SpeakerModel(torch.nn.Module):
    """Backbone + classifier head, the unit that DDP wraps during training.

    >>> m = SpeakerModel(build_backbone("TDNN", 40, channels=32, embd_dim=16), build_head("AAM", 16, 4))
    >>> loss, logits = m(torch.randn(2, 50, 40), torch.tensor([50, 30]), torch.tensor([0, 3]))
    >>> tuple(logits.shape)
    (2, 4)
    """

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor):
        return self.head(self.backbone(features, lengths), labels)


def resolve_num_workers(configured: int | None, device: torch.device) -> int:
    """Data-loading workers to use: the configured number, or by default 0 on CPU and min(4, CPUs) on CUDA.

    On CPU the training step and the workers share the same cores; measured on 2 cores
    (``benchmarks/bench_train.py``), loading in the main process trained about twice as fast as 4 workers.

    >>> resolve_num_workers(None, torch.device("cpu")), resolve_num_workers(3, torch.device("cpu"))
    (0, 3)
    """
    if configured is not None:
        return int(configured)
    if device.type == "cpu":
        return 0
    return min(4, os.cpu_count() or 1)


def _trial_arrays(trials: Sequence[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(label, i, j)`` trials → labels ``[M]`` and index pairs ``[M, 2]`` (int64)."""
    arr = np.asarray(trials, dtype=np.int64).reshape(-1, 3)
    return arr[:, 0].copy(), arr[:, 1:].copy()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _atomic_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _config_differences(a: Mapping[str, Any], b: Mapping[str, Any], sections: Sequence[str]) -> list[str]:
    diffs = []
    for name in sections:
        va, vb = a.get(name), b.get(name)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            for key in sorted(set(va) | set(vb)):
                if va.get(key) != vb.get(key):
                    diffs.append(f"{name}.{key}: {va.get(key)!r} vs {vb.get(key)!r}")
        elif va != vb:
            diffs.append(f"{name}: {va!r} vs {vb!r}")
    return diffs


@dataclass
class _TrainParts:
    """What one training epoch works with (built once in :meth:`MVectorTrainer.train`)."""

    train_module: torch.nn.Module
    featurizer: torch.nn.Module
    spec_aug: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    margin_scheduler: MarginScheduler | None
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype
    writer: Any


class MVectorTrainer:
    """Train and evaluate a speaker-embedding model from a YAML configuration.

    ``configs`` is a bundled name (``"ecapa_tdnn"``), a YAML path or a dict; ``overrides`` are dotted keys
    (``{"dataset_conf.batch_size": "32"}`` or ``["--dataset_conf.batch_size=32"]``). Under ``torchrun`` the
    process group is set up from the environment: NCCL with ``use_gpu``, gloo on CPU.
    """

    def __init__(
        self,
        configs: Union[str, os.PathLike, Mapping[str, Any]] = "ecapa_tdnn",
        use_gpu: bool = True,
        overrides: Union[Mapping[str, Any], Sequence[str], None] = None,
        augment_conf_path: Union[str, os.PathLike, None] = None,
    ):
        self.configs = load_config(configs, overrides)
        self.use_gpu = use_gpu
        self.augment_conf = load_augmentation_config(augment_conf_path) if augment_conf_path else None
        self._ctx: DistContext | None = None

    # ------------------------------------------------------------------ building blocks
    @property
    def model_name(self) -> str:
        """``<Model>_<Feature>``: the folder under ``save_model_path`` holding this model's checkpoints."""
        return f"{self.configs['use_model']}_{self.configs['preprocess_conf']['feature_method']}"

    @property
    def ctx(self) -> DistContext:
        """The process context (created on first use, which sets up torchrun's process group)."""
        if self._ctx is None:
            self._ctx = DistContext.from_env(self.use_gpu)
        return self._ctx

    def _log(self, message: str) -> None:
        if self._ctx is None or self._ctx.is_main:
            print(message, flush=True)

    def build_embedding_model(self, configs: Mapping[str, Any] | None = None) -> EmbeddingModel:
        """Featurizer + backbone (waveform → embedding) for ``configs`` (default: this trainer's)."""
        conf = configs or self.configs
        featurizer = build_featurizer(
            conf["preprocess_conf"]["feature_method"],
            conf.get("feature_conf") or {},
            normalize=conf["preprocess_conf"]["normalize"],
        )
        backbone = build_backbone(conf["use_model"], featurizer.feature_dim, **(conf.get("model_conf") or {}))
        return EmbeddingModel(featurizer, backbone)

    def _loss_conf(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        conf = dict(self.configs.get("loss_conf") or {})
        return conf, conf.pop("margin_scheduler", None)

    # ------------------------------------------------------------------ training
    def train(
        self,
        save_model_path: Union[str, os.PathLike] = "models/",
        resume_model: Union[str, os.PathLike, None] = None,
        pretrained_model: Union[str, os.PathLike, None] = None,
    ) -> dict[str, Any]:
        """Train for ``train_conf.max_epoch`` epochs; returns the last evaluation result (rank 0).

        Checkpoints go to ``save_model_path/<Model>_<Feature>/{last_model,best_model,epoch_N}``.
        ``resume_model`` continues a run exactly (weights, optimizer, schedules, RNG, epoch);
        ``pretrained_model`` loads the weights that match and lists the ones it skipped.
        """
        ctx = self.ctx
        conf = self.configs
        ds, tc, oc = conf["dataset_conf"], conf["train_conf"], conf["optimizer_conf"]
        seed = int(tc["seed"])
        _seed_everything(seed)
        model_dir = Path(save_model_path) / self.model_name

        train_utts = load_utterances(ds["train_list"], ds["num_speakers"])
        num_speakers = ds["num_speakers"] or infer_num_speakers(train_utts)
        check_num_speakers(train_utts, num_speakers)
        conf["dataset_conf"]["num_speakers"] = num_speakers

        augmenter = build_augmenter(self.augment_conf) if self.augment_conf else None
        spec_kwargs = spec_augment_kwargs(self.augment_conf) if self.augment_conf else None
        dataset = TrainDataset(
            train_utts,
            sample_rate=ds["sample_rate"],
            max_duration=ds["max_duration"],
            min_duration=ds["min_duration"],
            augmenter=augmenter,
            normalize=ds["use_dB_normalization"],
            target_db=ds["target_dB"],
            vad=ds["vad"],
            seed=seed,
        )
        if dataset.num_filtered_short or dataset.num_unreadable:
            self._log(
                f"train list: left out {dataset.num_filtered_short} clips shorter than {ds['min_duration']} s "
                f"and {dataset.num_unreadable} unreadable files; {len(dataset)} remain"
            )
        loader, sampler, generator = self._train_loader(dataset, ctx, seed)
        steps_per_epoch = len(loader)
        if steps_per_epoch == 0:
            raise DataListError(
                f"{ds['train_list']}: {len(dataset)} usable utterances are too few to train on "
                f"({ctx.world_size} processes need at least 2 each)"
            )

        embedder = self.build_embedding_model().to(ctx.device)
        loss_conf, sched_conf = self._loss_conf()
        head = build_head(conf["use_loss"], embedder.backbone.embd_dim, num_speakers, **loss_conf)
        model = SpeakerModel(embedder.backbone, head).to(ctx.device)
        featurizer = embedder.featurizer
        spec_aug = SpecAugment(**spec_kwargs).to(ctx.device) if spec_kwargs else None

        optimizer = build_optimizer(model.parameters(), oc)
        max_epoch = int(tc["max_epoch"])
        scheduler = build_scheduler(optimizer, oc, steps_per_epoch, max_epoch)
        margin_scheduler = None
        if sched_conf and isinstance(head, CEHead):
            warnings.warn("loss_conf.margin_scheduler has no effect with the CE loss", stacklevel=2)
        elif sched_conf:
            margin_scheduler = MarginScheduler(
                head,
                initial_margin=float(sched_conf.get("initial_margin", 0.0)),
                final_margin=float(sched_conf.get("final_margin", head.margin)),
                start_step=int(round(float(sched_conf.get("start_epoch", 0)) * steps_per_epoch)),
                end_step=int(round(float(sched_conf.get("end_epoch", 0)) * steps_per_epoch)),
            )
        use_amp = bool(tc["amp"]) and ctx.device.type == "cuda"
        if tc["amp"] and not use_amp:
            warnings.warn("train_conf.amp applies on CUDA only; training on the CPU in float32", stacklevel=2)
        amp_dtype = torch.bfloat16 if tc["amp_dtype"] == "bfloat16" else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        start_epoch, global_step, best_eer = 1, 0, None
        if resume_model is not None and pretrained_model is not None:
            raise ConfigError("use either resume_model or pretrained_model, not both")
        if resume_model is not None:
            ckpt = load_checkpoint(resume_model, map_location=ctx.device, need_training_state=True)
            diffs = _config_differences(ckpt.config, conf, MODEL_SECTIONS)
            if diffs:
                raise CheckpointError(
                    f"{resume_model} was trained with another model configuration: " + "; ".join(diffs)
                )
            model.backbone.load_state_dict(ckpt.model_state)
            if ckpt.head_state is None:
                raise CheckpointError(f"{resume_model}: no head.pt, cannot resume training from it")
            head.load_state_dict(ckpt.head_state)
            optimizer.load_state_dict(ckpt.optimizer_state)
            scheduler.load_state_dict(ckpt.scheduler_state)
            if ckpt.scaler_state:
                scaler.load_state_dict(ckpt.scaler_state)
            start_epoch, global_step, best_eer = ckpt.epoch + 1, ckpt.step, ckpt.best_eer
            if ckpt.rng_state is not None:
                restore_rng_state(ckpt.rng_state)
            if margin_scheduler is not None:
                margin_scheduler.step(global_step)
            self._log(f"resumed {resume_model}: epoch {ckpt.epoch} done, step {global_step}, best EER {best_eer}")
        elif pretrained_model is not None:
            ckpt = load_checkpoint(pretrained_model, map_location=ctx.device)
            loaded, skipped = load_matching_weights(model.backbone, ckpt.model_state)
            self._log(f"pretrained {pretrained_model}: loaded {len(loaded)} backbone tensors")
            if ckpt.head_state is not None:
                loaded_h, skipped_h = load_matching_weights(head, ckpt.head_state)
                skipped = list(skipped) + [f"head.{s}" for s in skipped_h]
            for item in skipped:
                self._log(f"  skipped {item}")
        elif ctx.is_main and (model_dir / "last_model").exists():
            self._log(f"note: {model_dir} holds checkpoints; they are overwritten (pass --resume_model to continue)")

        train_module: torch.nn.Module = model
        if ctx.distributed:
            train_module = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
            )

        writer = self._make_writer() if ctx.is_main else None
        parts = _TrainParts(
            train_module,
            featurizer,
            spec_aug,
            optimizer,
            scheduler,
            margin_scheduler,
            scaler,
            use_amp,
            amp_dtype,
            writer,
        )
        result: dict[str, Any] = {}
        total_skipped = 0
        self._log(
            f"training {self.model_name}: {len(dataset)} utterances, {num_speakers} speakers, "
            f"{steps_per_epoch} steps/epoch × {max_epoch - start_epoch + 1} epochs on {ctx.device} "
            f"(world size {ctx.world_size})"
        )
        for epoch in range(start_epoch, max_epoch + 1):
            _seed_everything(seed * 1000 + epoch)
            dataset.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            if generator is not None:
                generator.manual_seed(seed * 1000 + epoch)
            model.train()
            featurizer.train()
            skipped_epoch, global_step = self._train_epoch(epoch, max_epoch, loader, parts, global_step)
            head.check_labels()  # surfaces a deferred out-of-range label error from CUDA steps
            skipped_all = int(ctx.all_reduce_sum(torch.tensor(len(skipped_epoch))).item())
            total_skipped += skipped_all
            if skipped_all:
                shown = ", ".join(f"{p} ({r})" for p, r in skipped_epoch[:5])
                self._log(f"epoch {epoch}: skipped {skipped_all} unreadable files, e.g. {shown}")
            do_eval = tc["eval_interval"] > 0 and epoch % tc["eval_interval"] == 0 or epoch == max_epoch
            if ctx.is_main:
                metrics = None
                if do_eval:
                    embedder.eval()
                    metrics = self.evaluate_model(embedder, ctx.device, progress=False)
                    self._log(
                        f"epoch {epoch}: EER {metrics['eer']:.4f}  minDCF {metrics['min_dcf']:.4f}  "
                        f"threshold {metrics['threshold']:.4f}"
                    )
                    if writer is not None:
                        writer.add_scalar("Test/eer", metrics["eer"], epoch)
                        writer.add_scalar("Test/min_dcf", metrics["min_dcf"], epoch)
                        writer.add_scalar("Test/threshold", metrics["threshold"], epoch)
                    result = dict(metrics)
                improved = metrics is not None and (best_eer is None or metrics["eer"] <= best_eer)
                if improved:
                    best_eer = metrics["eer"]
                state = dict(
                    model_state=model.backbone.state_dict(),
                    head_state=head.state_dict(),
                    optimizer_state=optimizer.state_dict(),
                    scheduler_state=scheduler.state_dict(),
                    scaler_state=scaler.state_dict() if scaler.is_enabled() else None,
                    rng_state=capture_rng_state(),
                    config=conf,
                    epoch=epoch,
                    step=global_step,
                    best_eer=best_eer,
                    extra={"library_version": __version__, "num_speakers": num_speakers},
                )
                for name in ("last_model", f"epoch_{epoch}") + (("best_model",) if improved else ()):
                    path = save_checkpoint(model_dir / name, **state)
                    if metrics is not None and name != f"epoch_{epoch}":
                        _atomic_json(path / "result.json", {**metrics, "epoch": epoch})
                prune_epoch_checkpoints(model_dir, int(tc["keep_last_epochs"]))
            ctx.barrier()
        if writer is not None:
            writer.close()
        if total_skipped:
            self._log(f"training done; {total_skipped} unreadable files were skipped in all")
        result["model_dir"] = str(model_dir)
        return result

    def _train_loader(self, dataset: TrainDataset, ctx: DistContext, seed: int):
        ds = self.configs["dataset_conf"]
        sampler = None
        generator = None
        if ctx.distributed:
            sampler = DistributedSampler(
                dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
            )
        else:
            generator = torch.Generator()
            generator.manual_seed(seed)
            sampler = None
        workers = resolve_num_workers(ds["num_workers"], ctx.device)
        batch_size = int(ds["batch_size"])
        per_rank = len(dataset) // ctx.world_size
        if 2 <= per_rank < batch_size:
            warnings.warn(
                f"{ds['train_list']}: {per_rank} utterances per process are fewer than dataset_conf.batch_size "
                f"({batch_size}); using batches of {per_rank}",
                stacklevel=3,
            )
            batch_size = per_rank
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler if sampler is not None else RandomSampler(dataset, generator=generator),
            num_workers=workers,
            collate_fn=collate_batch,
            drop_last=True,
            pin_memory=ctx.device.type == "cuda",
            prefetch_factor=ds["prefetch_factor"] if workers > 0 else None,
            generator=generator,
        )
        return loader, sampler, generator

    def _train_epoch(self, epoch: int, max_epoch: int, loader, parts: _TrainParts, global_step: int):
        train_module, featurizer, spec_aug = parts.train_module, parts.featurizer, parts.spec_aug
        optimizer, scheduler, margin_scheduler, scaler = (
            parts.optimizer,
            parts.scheduler,
            parts.margin_scheduler,
            parts.scaler,
        )
        use_amp, amp_dtype, writer = parts.use_amp, parts.amp_dtype, parts.writer
        ctx = self.ctx
        tc = self.configs["train_conf"]
        device = ctx.device
        steps = len(loader)
        skipped: list[tuple[str, str]] = []
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        window_samples = 0
        wait_time = 0.0
        start = last = time.perf_counter()
        head = train_module.module.head if hasattr(train_module, "module") else train_module.head
        for step, batch in enumerate(loader, 1):
            now = time.perf_counter()
            wait_time += now - last
            skipped.extend(batch.skipped)
            waves, lengths, labels = batch.waveforms, batch.lengths, batch.labels
            weight = 1.0
            if waves.shape[0] == 0:
                # Every file of this batch was unreadable: keep the step (all ranks must step together)
                # with a silent dummy input that contributes nothing.
                waves = torch.zeros(1, int(self.configs["dataset_conf"]["sample_rate"]))
                lengths = torch.tensor([waves.shape[1]])
                labels = torch.zeros(1, dtype=torch.int64)
                weight = 0.0
            waves = waves.to(device, non_blocking=True)
            lengths = lengths.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.no_grad():
                feats, frame_lengths = featurizer(waves, lengths)
                if spec_aug is not None:
                    feats = spec_aug(feats, frame_lengths)
            autocast = torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()
            with autocast:
                loss, logits = train_module(feats, frame_lengths, labels)
            loss = loss * weight
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc["grad_clip"]:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(train_module.parameters(), float(tc["grad_clip"]))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step += 1
            if margin_scheduler is not None:
                margin_scheduler.step(global_step)
            n = int(labels.shape[0]) if weight else 0
            loss_sum += loss.detach() * n
            correct += (logits.detach().argmax(dim=1) == labels).sum() * (1 if weight else 0)
            seen += n
            window_samples += n
            last = time.perf_counter()
            if ctx.is_main and (step % tc["log_interval"] == 0 or step == steps):
                elapsed = last - start
                rate = window_samples * ctx.world_size / max(elapsed, 1e-9)
                remaining = (steps - step + (max_epoch - epoch) * steps) * elapsed / max(step, 1)
                mean_loss = float(loss_sum) / max(seen, 1)
                acc = float(correct) / max(seen, 1)
                lr = scheduler.get_last_lr()[0]
                self._log(
                    f"epoch {epoch}/{max_epoch} step {step}/{steps}  loss {mean_loss:.4f}  acc {acc:.3f}  "
                    f"lr {lr:.2e}  margin {head.margin:.3f}  {rate:.1f} samples/s  "
                    f"data wait {100 * wait_time / max(elapsed, 1e-9):.0f}%  "
                    f"ETA {time.strftime('%H:%M:%S', time.gmtime(remaining))}"
                )
                if writer is not None:
                    writer.add_scalar("Train/Loss", mean_loss, global_step)
                    writer.add_scalar("Train/Accuracy", acc, global_step)
                    writer.add_scalar("Train/lr", lr, global_step)
                    writer.add_scalar("Train/margin", float(head.margin), global_step)
        return skipped, global_step

    def _make_writer(self):
        backend = self.configs["train_conf"]["log_backend"]
        log_dir = os.path.join(self.configs["train_conf"]["log_dir"], self.model_name)
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

    # ------------------------------------------------------------------ evaluation
    def load_embedding_model(self, checkpoint: Union[str, os.PathLike]) -> tuple[EmbeddingModel, dict[str, Any]]:
        """Rebuild featurizer + backbone from a checkpoint folder and the config stored with it.

        The checkpoint's model sections win; where this trainer's config differs, the differences are listed.
        """
        ckpt = load_checkpoint(checkpoint, map_location="cpu")
        model_conf = dict(self.configs)
        diffs = _config_differences(ckpt.config, self.configs, MODEL_SECTIONS)
        if diffs:
            self._log(f"note: using the model configuration stored in {checkpoint} ({'; '.join(diffs)})")
        for name in MODEL_SECTIONS:
            model_conf[name] = ckpt.config.get(name)
        model = self.build_embedding_model(model_conf)
        try:
            model.backbone.load_state_dict(ckpt.model_state)
        except RuntimeError as err:
            raise CheckpointError(f"{checkpoint}: weights do not fit the stored configuration: {err}") from err
        return model, ckpt.config

    def evaluate(
        self,
        resume_model: Union[str, os.PathLike, None] = None,
        save_image_path: Union[str, os.PathLike, None] = None,
        cohort_list: Union[str, os.PathLike, None] = None,
        asnorm_top_k: int = 300,
        write_result: bool = True,
    ) -> dict[str, Any]:
        """Evaluate a checkpoint folder on the test list / trial list; writes ``result.json`` into it.

        Returns ``eer``, ``min_dcf`` (P_target 0.01), ``min_dcf_0.05``, ``threshold`` (the EER threshold),
        ``tpr``/``fpr`` there and ``num_trials``. ``save_image_path`` writes a DET plot and a score histogram;
        ``cohort_list`` (a ``path<TAB>label`` list) turns on adaptive score normalisation (AS-norm).
        """
        if resume_model is None:
            raise ConfigError(
                "evaluate needs resume_model: a checkpoint folder such as models/EcapaTdnn_Fbank/best_model"
            )
        ckpt_dir = Path(resume_model)
        device = self.ctx.device
        model, _ = self.load_embedding_model(ckpt_dir)
        model = model.to(device).eval()
        metrics = self.evaluate_model(
            model, device, save_image_path=save_image_path, cohort_list=cohort_list, asnorm_top_k=asnorm_top_k
        )
        if write_result:
            _atomic_json(ckpt_dir / "result.json", metrics)
        return metrics

    def _embed_paths(
        self, model: EmbeddingModel, paths: Sequence[str], device, progress: bool
    ) -> tuple[np.ndarray, list[tuple[str, str]], np.ndarray]:
        ds = self.configs["dataset_conf"]
        dataset = EvalDataset(
            list(paths),
            sample_rate=ds["sample_rate"],
            max_duration=ds["eval_max_duration"],
            normalize=ds["use_dB_normalization"],
            target_db=ds["target_dB"],
            vad=ds["vad"],
        )
        batches = length_batches(dataset.durations(), ds["eval_batch_size"])
        workers = min(resolve_num_workers(ds["num_workers"], torch.device(device)), 4)
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=collate_batch,
            prefetch_factor=2 if workers > 0 else None,
        )
        dim = model.backbone.embd_dim
        out = np.zeros((len(paths), dim), dtype=np.float32)
        ok = np.ones(len(paths), dtype=bool)
        bad: list[tuple[str, str]] = []
        iterator = loader
        if progress:
            from tqdm import tqdm

            iterator = tqdm(loader, total=len(batches), desc="embedding", unit="batch")
        with torch.inference_mode():
            for batch in iterator:
                for path, reason in batch.skipped:
                    bad.append((path, reason))
                if batch.waveforms.shape[0] == 0:
                    continue
                emb = model(batch.waveforms.to(device), batch.lengths.to(device)).float().cpu().numpy()
                out[batch.labels.numpy()] = emb
        index = {p: i for i, p in enumerate(paths)}
        for path, _ in bad:
            if path in index:
                ok[index[path]] = False
        return out, bad if bad else [], ok

    def evaluate_model(
        self,
        model: EmbeddingModel,
        device,
        progress: bool = True,
        save_image_path=None,
        cohort_list=None,
        asnorm_top_k: int = 300,
    ) -> dict[str, Any]:
        """Embed the test utterances with ``model`` (waveform → embedding) and score the trials.

        Uses ``dataset_conf.trials_list`` when set, else every pair of distinct test utterances (exact, in
        bounded memory) or ``num_eval_trials`` balanced pairs. Returns the metrics dict (see :meth:`evaluate`).
        """
        ds = self.configs["dataset_conf"]
        model.eval()
        images: list[str] = []
        if ds["trials_list"]:
            trials = read_trials(ds["trials_list"], ds["trials_root"])
            paths = sorted({p for _, a, b in trials for p in (a, b)})
            emb, bad, ok = self._embed_paths(model, paths, device, progress)
            index = {p: i for i, p in enumerate(paths)}
            keep = [(lab, index[a], index[b]) for lab, a, b in trials if ok[index[a]] and ok[index[b]]]
            dropped = len(trials) - len(keep)
            labels, pairs = _trial_arrays(keep)
            scores = cosine_score_trials(emb, pairs)
            scores = self._maybe_asnorm(scores, emb, pairs, cohort_list, asnorm_top_k, model, device, progress)
            metrics = evaluate_scores(scores, labels)
        else:
            utts = load_utterances(ds["test_list"])
            paths = [u.path for u in utts]
            emb, bad, ok = self._embed_paths(model, paths, device, progress)
            labels_all = np.array([u.label for u in utts], dtype=np.int64)
            emb, labels_all = emb[ok], labels_all[ok]
            dropped = int((~ok).sum())
            if ds["num_eval_trials"] or cohort_list:
                labels, pairs = _trial_arrays(generate_trials(labels_all.tolist(), ds["num_eval_trials"], seed=0))
                scores = cosine_score_trials(emb, pairs)
                scores = self._maybe_asnorm(scores, emb, pairs, cohort_list, asnorm_top_k, model, device, progress)
                metrics = evaluate_scores(scores, labels)
            else:
                metrics = all_pairs_metrics(emb, labels_all)
                scores = labels = None
                if save_image_path:
                    sample = generate_trials(labels_all.tolist(), min(200_000, len(labels_all) ** 2), seed=0)
                    labels, pairs = _trial_arrays(sample)
                    scores = cosine_score_trials(emb, pairs)
        if bad:
            metrics["unreadable_files"] = [p for p, _ in bad]
            self._log(f"evaluation: {len(bad)} unreadable files left out ({dropped} trials/utterances dropped)")
        if save_image_path and scores is not None:
            out = Path(save_image_path)
            out.mkdir(parents=True, exist_ok=True)
            det = out / f"{self.model_name}_det.png"
            hist = out / f"{self.model_name}_scores.png"
            save_det_plot(scores, labels, det)
            save_score_histogram(scores, labels, hist, threshold=metrics["threshold"])
            images = [str(det), str(hist)]
            metrics["images"] = images
        metrics = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in metrics.items()}
        return metrics

    def _maybe_asnorm(self, scores, emb, pairs, cohort_list, top_k, model, device, progress):
        if not cohort_list:
            return scores
        cohort_utts = load_utterances(cohort_list)
        cohort, _, cohort_ok = self._embed_paths(model, [u.path for u in cohort_utts], device, progress)
        cohort = cohort[cohort_ok]
        return as_norm(scores, emb[pairs[:, 0]], emb[pairs[:, 1]], cohort, top_k=top_k)


class _VisualDLWriter:
    """Adapts VisualDL's ``LogWriter.add_scalar(tag, value, step)`` keyword style to a common interface."""

    def __init__(self, writer):
        self._writer = writer

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag=tag, value=float(value), step=int(step))

    def close(self) -> None:
        self._writer.close()
