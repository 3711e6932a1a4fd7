"""MVectorTrainer: YAML-driven training (CPU, one GPU, or torchrun DDP) in named phases, with callbacks.

``train()`` runs the phases in order — :meth:`~MVectorTrainer.setup_data`, :meth:`~MVectorTrainer.setup_model`,
:meth:`~MVectorTrainer.setup_optimizer`, :meth:`~MVectorTrainer.restore`, :meth:`~MVectorTrainer.fit` — and
returns the last evaluation's metrics with the whole ``history`` (one record per epoch). Each phase can be called
on its own, so a test or a benchmark can build a trainer and run one :meth:`~MVectorTrainer.train_step`.
Logging, evaluation and checkpointing are callbacks (:mod:`mvector.training.callbacks`).

>>> trainer = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides={"model_conf.channels": "64"})
>>> trainer.model_name
'EcapaTdnn_MelSpectrogram'

Evaluation lives in :mod:`mvector.evaluation.evaluator`; ``trainer.evaluate(resume_model=...)`` is kept as a
shortcut to it.
"""

from __future__ import annotations

import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from mvector.audio.augment import build_augmenter, load_augmentation_config, spec_augment_kwargs, speed_label_groups
from mvector.build import (
    EMBEDDING_KEYS,
    build_embedding_model,
    build_head_for,
    build_optimizer_for,
    build_scheduler_for,
    config_differences,
    model_name,
)
from mvector.checkpoint import load_checkpoint, load_matching_weights, restore_rng_state
from mvector.config import DEFAULT_CONFIG, load_config
from mvector.data.dataset import TrainDataset, collate_batch
from mvector.data.header_cache import indexed_utterances
from mvector.data.lists import check_num_speakers, infer_num_speakers
from mvector.data.table import UtteranceTable
from mvector.errors import CheckpointError, ConfigError, DataListError, MVectorError
from mvector.evaluation.evaluator import default_num_workers
from mvector.features import SpecAugment
from mvector.models import EmbeddingModel
from mvector.models.heads import CEHead, MarginScheduler
from mvector.training.callbacks import Callback, CheckpointCallback, ConsoleLogger, EvaluationCallback, ScalarLogger
from mvector.training.distributed import DistContext
from mvector.utils.seeding import seed_everything

__all__ = ["MVectorTrainer", "SpeakerModel", "StepInfo", "TrainingDiverged", "RESUME_KEYS"]

PathLike = Union[str, os.PathLike]

#: Configuration keys a resumed run must share with its checkpoint (besides the embedding keys).
RESUME_KEYS = EMBEDDING_KEYS + ("use_loss", "loss_conf", "optimizer_conf", "dataset_conf.num_speakers")


_NO_BAD_STEP = 2**62  # "no non-finite loss yet" in StepInfo.first_bad_step


class TrainingDiverged(MVectorError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class SpeakerModel(torch.nn.Module):
    """Backbone + classifier head, the unit that DDP wraps during training.

    >>> from mvector.models import build_backbone, build_head
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


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (CPU training): no ``mmap`` for large blocks, no heap trimming.

    A training step's activations are tens of MB each; glibc maps blocks above its mmap threshold (32 MB at most)
    fresh and unmaps them on free, so the kernel zero-fills them page by page on every step: with ECAPA-TDNN
    C=512, batch 64, 3 s crops that was 1.5 M page faults and ~30 % of the step's CPU time in the kernel
    (``benchmarks/bench_train.py``, ``*_retain`` runs). Kept memory is reused without faults; the peak resident
    size grows (~40 % there). Set ``MVECTOR_CPU_KEEP_FREED_MEMORY=0`` to leave glibc's defaults. Returns False
    where ``mallopt`` is unavailable (not glibc).
    """
    import ctypes
    import ctypes.util
    import sys

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))


@dataclass
class StepInfo:
    """Running figures of the current epoch, handed to callbacks after each step (tensors stay on the device)."""

    epoch: int
    max_epoch: int
    steps: int
    step: int = 0
    global_step: int = 0
    samples: int = 0
    loss_sum: torch.Tensor | float = 0.0
    correct: torch.Tensor | float = 0.0
    first_bad_step: torch.Tensor | None = None
    wait_time: float = 0.0
    epoch_start: float = field(default_factory=time.perf_counter)
    lr: float = 0.0
    margin: float = 0.0
    logged: dict[str, float] = field(default_factory=dict)


class MVectorTrainer:
    """Train a speaker-embedding model from a YAML configuration.

    ``configs`` is a bundled name (``"ecapa_tdnn"``), a YAML path or a dict; ``overrides`` are dotted keys
    (``{"dataset_conf.batch_size": "32"}`` or ``["--dataset_conf.batch_size=32"]``); ``augment_conf_path`` fills
    the ``augment_conf`` section from a YAML file. ``callbacks`` are added to the built-in ones. Under
    ``torchrun`` the process group is set up from the environment: NCCL with ``use_gpu``, gloo on CPU.
    """

    def __init__(
        self,
        configs: Union[str, os.PathLike, Mapping[str, Any]] = DEFAULT_CONFIG,
        use_gpu: bool | None = None,
        overrides: Union[Mapping[str, Any], Sequence[str], None] = None,
        augment_conf_path: PathLike | None = None,
        callbacks: Sequence[Callback] = (),
    ):
        self.configs = load_config(configs, overrides)
        if augment_conf_path:
            self.configs["augment_conf"] = load_augmentation_config(augment_conf_path)
        self.augment_given = bool(augment_conf_path) or bool(self.configs.get("augment_conf"))
        self.use_gpu = use_gpu
        self.extra_callbacks = list(callbacks)
        self._ctx: DistContext | None = None
        self.resumed_from: Path | None = None
        self.best_eer: float | None = None
        self.global_step = 0
        self.start_epoch = 1
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ basics
    @property
    def model_name(self) -> str:
        """``<Model>_<Feature>``: the folder under ``save_model_path`` holding this model's checkpoints."""
        return model_name(self.configs)

    @property
    def max_epoch(self) -> int:
        """Epochs of the run (``train_conf.max_epoch``)."""
        return int(self.configs["train_conf"]["max_epoch"])

    @property
    def ctx(self) -> DistContext:
        """The process context (created on first use, which sets up torchrun's process group)."""
        if self._ctx is None:
            timeout = float(self.configs["train_conf"]["dist_timeout_minutes"])
            self._ctx = DistContext.from_env(self.use_gpu, timeout_minutes=timeout)
        return self._ctx

    def log(self, message: str) -> None:
        """Print a line on rank 0."""
        if self._ctx is None or self._ctx.is_main:
            print(message, flush=True)

    def build_embedding_model(self, configs: Mapping[str, Any] | None = None) -> EmbeddingModel:
        """Featurizer + backbone (waveform → embedding) for ``configs`` (default: this trainer's)."""
        return build_embedding_model(configs or self.configs)

    # ------------------------------------------------------------------ phase: data
    def setup_data(self) -> None:
        """Read and check the training list, build the dataset (with augmentation) and the loader."""
        ds, seed = self.configs["dataset_conf"], int(self.configs["train_conf"]["seed"])
        utts = self._read_train_list()
        labelled = utts.first_of_each_label()  # the same label checks, on one utterance per speaker
        self.num_speakers = ds["num_speakers"] or infer_num_speakers(labelled)
        check_num_speakers(labelled, self.num_speakers)
        ds["num_speakers"] = self.num_speakers
        augment = self.configs.get("augment_conf") or None
        #: Classifier outputs: one per speaker, times the speeds trained as speakers of their own.
        self.num_classes = self.num_speakers * speed_label_groups(augment)
        self.gpu_aug = self._device_augmenter(augment)
        self.aug_generator: torch.Generator | None = None  # seeded per epoch by train_epoch (None: global RNG)
        # With augmentation on the device, workers only decode and crop: a little longer, so a sped-up clip still
        # fills the crop.
        crop = ds["max_duration"] * (self.gpu_aug.max_speed if self.gpu_aug is not None else 1.0)
        cpu_stride = self.num_speakers if self.gpu_aug is None and self.num_classes > self.num_speakers else 0
        self.dataset = TrainDataset(
            utts,
            sample_rate=ds["sample_rate"],
            max_duration=crop,
            min_duration=ds["min_duration"],
            augmenter=build_augmenter(augment) if augment and self.gpu_aug is None else None,
            normalize=ds["use_dB_normalization"],
            target_db=ds["target_dB"],
            vad=ds["vad"],
            seed=seed,
            short_clips=ds["short_clips"],
            # speeds as speakers: the CPU augmenter reports each clip's speed group (the device one, in train_step)
            speed_label_stride=cpu_stride,
        )
        if self.dataset.num_filtered_short or self.dataset.num_unreadable:
            self.log(
                f"train list: left out {self.dataset.num_filtered_short} clips shorter than {ds['min_duration']} s "
                f"and {self.dataset.num_unreadable} unreadable files; {len(self.dataset)} remain"
            )
        self.loader, self.sampler, self.generator = self._train_loader(seed)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise DataListError(
                f"{ds['train_list']}: {len(self.dataset)} usable utterances are too few to train on "
                f"({self.ctx.world_size} processes need at least 2 each)"
            )

    def _read_train_list(self) -> UtteranceTable:
        """The checked training list with its header durations, read once and cached beside the list
        (:func:`~mvector.data.header_cache.indexed_utterances`): under torchrun rank 0 reads (or finds) it while
        the other ranks wait, then they load the cache rank 0 wrote."""
        ds, ctx = self.configs["dataset_conf"], self.ctx
        others_wait = ctx.distributed and not ctx.is_main
        if others_wait:
            ctx.barrier("rank 0's reading of the training list")
        scan = (ds["min_duration"] or 0) > 0  # durations are needed only to leave out short clips
        try:
            return indexed_utterances(ds["train_list"], ds["num_speakers"], with_durations=scan)
        finally:
            if ctx.distributed and ctx.is_main:
                ctx.barrier("rank 0's reading of the training list")

    def _device_augmenter(self, augment: Mapping[str, Any] | None) -> Any:
        """The batched augmenter that runs on the training device (``train_conf.gpu_augment``), or None."""
        mode = self.configs["train_conf"]["gpu_augment"]
        if not augment or mode is False or (mode == "auto" and self.ctx.device.type != "cuda"):
            return None
        if load_augmentation_config(augment)["pitch"]["prob"] > 0:
            if mode is True:
                warnings.warn(
                    "train_conf.gpu_augment: the pitch augmentation runs on the CPU only; the whole waveform "
                    "augmentation stays in the data-loading workers",
                    stacklevel=3,
                )
            return None
        from mvector.audio.gpu_augment import GpuAugmenter

        aug = GpuAugmenter.from_config(augment, int(self.configs["dataset_conf"]["sample_rate"]))
        return aug.to(self.ctx.device) if aug.enabled else None

    def _train_loader(self, seed: int):
        ds, ctx = self.configs["dataset_conf"], self.ctx
        sampler = generator = None
        if ctx.distributed:
            sampler = DistributedSampler(
                self.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
            )
        else:
            generator = torch.Generator()
            generator.manual_seed(seed)
        workers = default_num_workers(ctx.device, ds["num_workers"])
        batch_size = int(ds["batch_size"])
        per_rank = len(self.dataset) // ctx.world_size
        if 2 <= per_rank < batch_size:
            warnings.warn(
                f"{ds['train_list']}: {per_rank} utterances per process are fewer than dataset_conf.batch_size "
                f"({batch_size}); using batches of {per_rank}",
                stacklevel=3,
            )
            batch_size = per_rank
        loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=sampler if sampler is not None else RandomSampler(self.dataset, generator=generator),
            num_workers=workers,
            collate_fn=collate_batch,
            drop_last=True,
            pin_memory=ctx.device.type == "cuda",
            prefetch_factor=ds["prefetch_factor"] if workers > 0 else None,
            generator=generator,
        )
        return loader, sampler, generator

    # ------------------------------------------------------------------ phase: model
    def setup_model(self) -> None:
        """Featurizer + backbone, the classifier head for ``num_classes``, SpecAugment; DDP under torchrun."""
        device = self.ctx.device
        if device.type == "cpu" and os.environ.get("MVECTOR_CPU_KEEP_FREED_MEMORY", "1") != "0":
            keep_freed_memory()
        self.embedding_model = self.build_embedding_model().to(device)
        self.head, self.margin_conf = build_head_for(self.configs, self.embedding_model.embd_dim, self.num_classes)
        self.model = SpeakerModel(self.embedding_model.backbone, self.head).to(device)
        augment = self.configs.get("augment_conf") or None
        spec_kwargs = spec_augment_kwargs(augment) if augment else None
        self.spec_aug = SpecAugment(**spec_kwargs).to(device) if spec_kwargs else None
        self.train_module: torch.nn.Module = self.model
        if self.ctx.distributed:
            ids = [self.ctx.local_rank] if device.type == "cuda" else None
            self.train_module = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    # ------------------------------------------------------------------ phase: optimiser
    def setup_optimizer(self) -> None:
        """Optimiser, per-step schedule, margin schedule and AMP gradient scaler."""
        tc = self.configs["train_conf"]
        self.optimizer = build_optimizer_for(self._parameter_groups(), self.configs)
        self.scheduler = build_scheduler_for(self.optimizer, self.configs, self.steps_per_epoch)
        self.margin_scheduler = None
        if self.margin_conf and isinstance(self.head, CEHead):
            warnings.warn("loss_conf.margin_scheduler has no effect with the CE loss", stacklevel=2)
        elif self.margin_conf:
            m, steps = self.margin_conf, self.steps_per_epoch
            try:
                self.margin_scheduler = MarginScheduler(
                    self.head,
                    initial_margin=float(m.get("initial_margin", 0.0)),
                    final_margin=float(m.get("final_margin", self.head.margin)),
                    start_step=int(round(float(m.get("start_epoch", 0)) * steps)),
                    end_step=int(round(float(m.get("end_epoch", 0)) * steps)),
                )
            except (TypeError, ValueError, OverflowError) as err:
                raise ConfigError(f"loss_conf.margin_scheduler: {err}") from err
        self.use_amp = bool(tc["amp"]) and self.ctx.device.type == "cuda"
        if tc["amp"] and not self.use_amp:
            warnings.warn("train_conf.amp applies on CUDA only; training on the CPU in float32", stacklevel=2)
        self.amp_dtype = torch.bfloat16 if tc["amp_dtype"] == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    def _parameter_groups(self) -> Any:
        """All parameters at ``learning_rate``, or (``optimizer_conf.backbone_lr_scale`` != 1) two groups: the
        backbone at ``learning_rate × backbone_lr_scale``, the head at ``learning_rate``; the schedule scales
        both alike."""
        oc = self.configs["optimizer_conf"]
        scale = float(oc["backbone_lr_scale"])
        if scale == 1.0:
            return self.model.parameters()
        rate = float(oc["learning_rate"])
        return [
            {"params": list(self.model.backbone.parameters()), "lr": rate * scale},
            {"params": list(self.head.parameters()), "lr": rate},
        ]

    # ------------------------------------------------------------------ phase: restore
    def restore(self, resume_model: PathLike | None = None, pretrained_model: PathLike | None = None) -> None:
        """Continue a run exactly (``resume_model``) or start from matching weights (``pretrained_model``)."""
        if resume_model is not None and pretrained_model is not None:
            raise ConfigError("use either resume_model or pretrained_model, not both")
        if resume_model is not None:
            self._resume(Path(resume_model))
        elif pretrained_model is not None:
            self._load_pretrained(Path(pretrained_model))
        if resume_model is None and self.configs["train_conf"]["head_init"] == "class_means":
            self.init_head_from_class_means()

    def init_head_from_class_means(self) -> None:
        """``train_conf.head_init: class_means``: every speaker's head row (each of its sub-centers) becomes the
        mean of its training clips' L2-normalised embeddings from the backbone as it is now (after
        ``--pretrained_model``), so the classifier is right from the first step and its first gradients into a
        pretrained backbone are those of a trained head, not of random rows. The clips are embedded whole and
        unaugmented, as evaluation embeds them (one pass over the training list; every process computes the same
        rows under torchrun). Rows of the extra speed classes (``speaker_per_speed``) and of speakers with no
        readable clip stay random."""
        from mvector.evaluation.evaluator import EvalSettings, Evaluator

        ds = self.configs["dataset_conf"]
        utts = self._read_train_list()
        paths = list(utts.paths())
        labels = torch.as_tensor(utts.labels, dtype=torch.int64)
        workers = default_num_workers(self.ctx.device, ds["num_workers"], cap=4)
        model = self.embedding_model.eval()
        evaluator = Evaluator(model, EvalSettings.from_dataset_conf(ds, workers), progress=False, log=self.log)
        start = time.perf_counter()
        emb = evaluator.embed_paths(paths, desc="head init")
        ok = torch.as_tensor(emb.ok, dtype=torch.bool)
        vectors = torch.nn.functional.normalize(torch.as_tensor(emb.vectors[emb.ok], dtype=torch.float32), dim=1)
        labels = labels[ok]
        sums = torch.zeros(self.num_speakers, vectors.shape[1]).index_add_(0, labels, vectors)
        counts = torch.bincount(labels, minlength=self.num_speakers)
        weight = self.head.weight
        per_class = weight.shape[0] // self.num_classes  # sub-centers
        with torch.no_grad():
            for speaker in torch.nonzero(counts).flatten().tolist():
                mean = torch.nn.functional.normalize(sums[speaker], dim=0).to(weight.device, weight.dtype)
                weight[speaker * per_class : (speaker + 1) * per_class] = mean
        self.log(
            f"head_init class_means: {int((counts > 0).sum())} of {self.num_classes} head classes from "
            f"{int(ok.sum())} training clips ({time.perf_counter() - start:.0f} s)"
        )

    def adopt_checkpoint_augmentation(self, resume_model: PathLike) -> None:
        """Resuming without an augmentation given: take the ``augment_conf`` the run started with."""
        if self.augment_given:
            return
        stored = load_checkpoint(resume_model, map_location="cpu").config.get("augment_conf") or {}
        if stored:
            self.configs["augment_conf"] = load_augmentation_config(stored)
            self.log(f"resuming with the augmentation stored in {resume_model}")

    def _resume(self, folder: Path) -> None:
        ckpt = load_checkpoint(folder, map_location=self.ctx.device, need_training_state=True)
        stored = load_config(dict(ckpt.config), validate=False)
        diffs = config_differences(stored, self.configs, RESUME_KEYS)
        if diffs:
            raise CheckpointError(
                f"{folder} was trained with another configuration; resuming needs the same one. Differences "
                f"(checkpoint vs now): {'; '.join(diffs)}. Start a new run (--pretrained_model) to change them."
            )
        if ckpt.head_state is None:
            raise CheckpointError(f"{folder}: no head.pt, cannot resume training from it")
        rows = {int(t.shape[0]) for t in ckpt.head_state.values() if torch.is_tensor(t) and t.dim() == 2}
        if rows and self.num_classes not in rows:
            raise CheckpointError(
                f"{folder}: its classifier has {sorted(rows)[0]} classes, this run {self.num_classes} "
                f"({self.num_speakers} speakers × {self.num_classes // self.num_speakers} speed groups); resuming "
                "needs the same augment_conf.speed.speaker_per_speed and speeds"
            )
        try:
            self.model.backbone.load_state_dict(ckpt.model_state)
            self.head.load_state_dict(ckpt.head_state)
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{folder}: cannot resume from it ({str(err).splitlines()[0]})") from err
        self.scheduler.load_state_dict(ckpt.scheduler_state)
        self._replan_schedule(folder, ckpt)
        if ckpt.scaler_state:
            self.scaler.load_state_dict(ckpt.scaler_state)
        self.start_epoch, self.global_step, self.best_eer = ckpt.epoch + 1, ckpt.step, ckpt.best_eer
        if ckpt.rng_state is not None:
            restore_rng_state(ckpt.rng_state)
        if self.margin_scheduler is not None:
            self.margin_scheduler.step(self.global_step)
        self.resumed_from = folder
        self.log(f"resumed {folder}: epoch {ckpt.epoch} done, step {self.global_step}, best EER {self.best_eer}")

    def _replan_schedule(self, folder: Path, ckpt: Any) -> None:
        """A run extended (or shortened) on resume continues its cosine over the new length, from where it is."""
        total = self.steps_per_epoch * self.max_epoch
        old_total = getattr(self.scheduler, "total_steps", total)
        if old_total != total and hasattr(self.scheduler, "total_steps"):
            self.scheduler.total_steps = total
            self.scheduler.step_count -= 1
            self.scheduler.step()  # re-apply the learning rate of the current step on the new plan
            self.log(
                f"note: {folder} was planned for {old_total} steps, this run has {total} "
                f"(train_conf.max_epoch {self.max_epoch}): the learning-rate schedule is re-planned over the new "
                f"length from step {self.scheduler.step_count}; lr now {self.scheduler.get_last_lr()[0]:.2e}"
            )

    def _load_pretrained(self, folder: Path) -> None:
        ckpt = load_checkpoint(folder, map_location=self.ctx.device)
        loaded, skipped = load_matching_weights(self.model.backbone, ckpt.model_state)
        self.log(f"pretrained {folder}: loaded {len(loaded)} backbone tensors")
        if ckpt.head_state is not None:
            _, skipped_head = load_matching_weights(self.head, ckpt.head_state)
            skipped = list(skipped) + [f"head.{s}" for s in skipped_head]
        for item in skipped:
            self.log(f"  skipped {item}")

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Any, info: StepInfo) -> None:
        """One optimiser step on a collated batch; updates ``info`` without waiting for the device."""
        device, tc = self.ctx.device, self.configs["train_conf"]
        waves, lengths, labels, weight = self._step_inputs(batch)
        waves = waves.to(device, non_blocking=True)
        lengths = lengths.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.no_grad():
            if self.gpu_aug is not None:
                ds = self.configs["dataset_conf"]
                out = int(round(self.crop_seconds(info.epoch) * ds["sample_rate"]))
                waves, lengths, groups = self.gpu_aug(
                    waves, lengths, self.aug_generator, out_samples=out, with_groups=True
                )
                labels = labels + groups * self.num_speakers
            feats, frame_lengths = self.embedding_model.featurizer(waves, lengths)
            if self.spec_aug is not None:
                feats = self.spec_aug(feats, frame_lengths)
        autocast = torch.autocast(device.type, dtype=self.amp_dtype) if self.use_amp else nullcontext()
        with autocast:
            loss, logits = self.train_module(feats, frame_lengths, labels)
        loss = loss * weight
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if tc["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.train_module.parameters(), float(tc["grad_clip"]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        if self.margin_scheduler is not None and not self.in_large_margin_stage(info.epoch):
            self.margin_scheduler.step(self.global_step)
        self._account(info, loss.detach(), logits.detach(), labels, int(labels.shape[0]) if weight else 0)

    def _step_inputs(self, batch: Any):
        if batch.waveforms.shape[0] > 0:
            return batch.waveforms, batch.lengths, batch.labels, 1.0
        # Every file of this batch was unreadable: keep the step (all ranks must step together) with a silent
        # dummy input that contributes nothing.
        rate = int(self.configs["dataset_conf"]["sample_rate"])
        return torch.zeros(1, rate), torch.tensor([rate]), torch.zeros(1, dtype=torch.int64), 0.0

    def _account(self, info: StepInfo, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, n: int) -> None:
        info.step += 1
        info.global_step = self.global_step
        info.samples += n
        info.loss_sum = info.loss_sum + loss * n
        info.correct = info.correct + (logits.argmax(dim=1) == labels).sum() * (1 if n else 0)
        # The first step whose loss was not finite (later steps are NaN too, once the weights are); _NO_BAD_STEP
        # while all were finite. Kept on the device: no host sync per step.
        # Python scalars, not torch.tensor(..., device=cuda): that would copy from pageable host memory and wait for
        # the GPU on every step.
        bad = torch.where(torch.isfinite(loss), _NO_BAD_STEP, info.global_step)
        info.first_bad_step = bad if info.first_bad_step is None else torch.minimum(info.first_bad_step, bad)
        info.lr = self.scheduler.get_last_lr()[0]
        info.margin = float(getattr(self.head, "margin", 0.0))

    def check_finite(self, info: StepInfo | None) -> None:
        """Stop with :class:`TrainingDiverged` when a step since the last check produced a non-finite loss."""
        info = info or getattr(self, "_last_info", None)
        if info is None or info.first_bad_step is None:
            return
        bad = int(info.first_bad_step)
        if bad != _NO_BAD_STEP:
            raise TrainingDiverged(
                f"the loss became NaN or infinite at step {bad} (epoch {info.epoch}); training stopped and the last "
                "good checkpoint is kept. Likely causes: a learning rate too high "
                f"(optimizer_conf.learning_rate {self.configs['optimizer_conf']['learning_rate']}), float16 AMP "
                "overflow (try train_conf.amp_dtype bfloat16), or no gradient clipping (train_conf.grad_clip)"
            )

    # ------------------------------------------------------------------ phase: fit
    def train_epoch(self, epoch: int, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
        """One pass over the training data; returns the epoch's record (loss, skipped files, seconds)."""
        seed = int(self.configs["train_conf"]["seed"])
        seed_everything(seed * 1000 + epoch)
        self.dataset.set_epoch(epoch)
        stretch = self.gpu_aug.max_speed if self.gpu_aug is not None else 1.0
        self.dataset.max_duration = self.crop_seconds(epoch) * stretch
        if self.in_large_margin_stage(epoch):
            self.head.update(float(self.configs["train_conf"]["large_margin"]))
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(seed * 1000 + epoch)
        if self.gpu_aug is not None:  # the device augmentation's draws: reproducible per epoch and rank
            device = self.ctx.device
            self.aug_generator = torch.Generator(device=device).manual_seed(seed * 1000 + epoch + 7919 * self.ctx.rank)
        freeze = epoch <= int(self.configs["train_conf"]["freeze_backbone_epochs"])
        self.model.backbone.requires_grad_(not freeze)
        self.model.train()
        if freeze:  # only the head learns: the backbone's weights and batch-norm statistics stay as loaded
            self.model.backbone.eval()
        elif self.configs["train_conf"]["freeze_backbone_bn"]:  # weights learn, running statistics stay as loaded
            for module in self.model.backbone.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        self.embedding_model.featurizer.train()
        info = self._last_info = StepInfo(epoch, self.max_epoch, self.steps_per_epoch, global_step=self.global_step)
        skipped: list[tuple[str, str]] = []
        last = time.perf_counter()
        for batch in self.loader:
            info.wait_time += time.perf_counter() - last
            skipped.extend(batch.skipped)
            self.train_step(batch, info)
            info.logged = {}
            for callback in callbacks:
                callback.on_step_end(self, info)
            last = time.perf_counter()
        self.check_finite(info)
        self.head.check_labels()  # surfaces a deferred out-of-range label error from CUDA steps
        total_skipped = int(self.ctx.all_reduce_sum(torch.tensor(len(skipped))).item())
        if total_skipped:
            shown = ", ".join(f"{p} ({r})" for p, r in skipped[:5])
            self.log(f"epoch {epoch}: skipped {total_skipped} unreadable files, e.g. {shown}")
        loss = float(info.loss_sum) / max(info.samples, 1)
        seconds = time.perf_counter() - info.epoch_start
        return {"epoch": epoch, "train_loss": loss, "skipped": total_skipped, "seconds": seconds}

    def in_large_margin_stage(self, epoch: int) -> bool:
        """Whether ``epoch`` is one of the large-margin fine-tuning epochs: the last ``train_conf.
        large_margin_epochs`` of the run, when the run is longer than that (a shorter run has none).

        >>> t = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides={"train_conf.large_margin_epochs": "1",
        ...                                                             "train_conf.max_epoch": "5"})
        >>> [t.in_large_margin_stage(e) for e in (1, 4, 5)]
        [False, False, True]
        """
        n = int(self.configs["train_conf"]["large_margin_epochs"])
        return 0 < n < self.max_epoch and epoch > self.max_epoch - n

    def crop_seconds(self, epoch: int) -> float:
        """The training crop of ``epoch`` (s): ``train_conf.large_margin_crop`` in the large-margin epochs (when
        set), else ``dataset_conf.max_duration``.

        >>> t = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides={"train_conf.large_margin_epochs": "1",
        ...     "train_conf.large_margin_crop": "5.0", "train_conf.max_epoch": "5"})
        >>> t.crop_seconds(4), t.crop_seconds(5)
        (3.0, 5.0)
        """
        crop = self.configs["train_conf"]["large_margin_crop"]
        if crop is not None and self.in_large_margin_stage(epoch):
            return float(crop)
        return float(self.configs["dataset_conf"]["max_duration"])

    def fit(self, callbacks: Sequence[Callback]) -> list[dict[str, Any]]:
        """Train from ``start_epoch`` to ``max_epoch``, calling ``callbacks``; returns the history."""
        for callback in callbacks:
            callback.on_train_start(self)
        classes = f" ({self.num_classes} classes: speeds as speakers)" if self.num_classes != self.num_speakers else ""
        self.log(
            f"training {self.model_name}: {len(self.dataset)} utterances, {self.num_speakers} speakers{classes}, "
            f"{self.steps_per_epoch} steps/epoch × {self.max_epoch - self.start_epoch + 1} epochs on "
            f"{self.ctx.device} (world size {self.ctx.world_size})"
        )
        tc = self.configs["train_conf"]
        stage = [e for e in range(1, self.max_epoch + 1) if self.in_large_margin_stage(e)]
        if stage:
            margin = "" if isinstance(self.head, CEHead) else f" at margin {tc['large_margin']:g}"
            self.log(
                f"large-margin fine-tuning: epochs {stage[0]}-{stage[-1]}{margin} on {self.crop_seconds(stage[0]):g} s "
                "crops"
            )
        elif int(tc["large_margin_epochs"]):
            self.log(
                f"note: train_conf.large_margin_epochs ({tc['large_margin_epochs']}) is not smaller than max_epoch "
                f"({self.max_epoch}): no large-margin epochs in this run"
            )
        for epoch in range(self.start_epoch, self.max_epoch + 1):
            record = self.train_epoch(epoch, callbacks)
            for callback in callbacks:
                callback.on_epoch_end(self, epoch, record)
            self.history.append(record)
            self.ctx.barrier(f"the end of epoch {epoch}")
        for callback in callbacks:
            callback.on_train_end(self, self.history)
        return self.history

    def default_callbacks(self, model_dir: Path, overwrite: bool) -> list[Callback]:
        """Console and scalar logging, evaluation and checkpointing on rank 0; nothing on the other ranks."""
        if not self.ctx.is_main:
            return list(self.extra_callbacks)
        tc = self.configs["train_conf"]
        return [
            ConsoleLogger(tc["log_interval"], tc["log_seconds"]),
            EvaluationCallback(tc["eval_interval"]),
            ScalarLogger(tc["log_backend"], Path(tc["log_dir"]) / self.model_name),
            CheckpointCallback(model_dir, tc["keep_last_epochs"], overwrite),
            *self.extra_callbacks,
        ]

    def train(
        self,
        save_model_path: PathLike = "models/",
        resume_model: PathLike | None = None,
        pretrained_model: PathLike | None = None,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Train for ``train_conf.max_epoch`` epochs; returns the last evaluation's metrics, ``history``, ``model_dir``.

        Checkpoints go to ``save_model_path/<Model>_<Feature>/{last_model,best_model,epoch_N}``; a folder holding
        another run is refused unless ``overwrite``. ``resume_model`` continues a run exactly (weights,
        optimizer, schedules, RNG, epoch, augmentation); ``pretrained_model`` loads the weights that match and
        lists the ones it skipped.
        """
        seed_everything(int(self.configs["train_conf"]["seed"]))
        model_dir = Path(save_model_path) / self.model_name
        if resume_model is not None:
            self.adopt_checkpoint_augmentation(resume_model)
        self.setup_data()
        self.setup_model()
        self.setup_optimizer()
        self.restore(resume_model, pretrained_model)
        history = self.fit(self.default_callbacks(model_dir, overwrite))
        evaluated = [r for r in history if "eer" in r]
        result: dict[str, Any] = {k: v for k, v in (evaluated[-1] if evaluated else {}).items()}
        result.update(history=history, model_dir=str(model_dir))
        return result

    # ------------------------------------------------------------------ evaluation shortcut
    def evaluate(
        self,
        resume_model: PathLike | None = None,
        save_image_path: PathLike | None = None,
        cohort_list: PathLike | None = None,
        asnorm_top_k: int = 300,
        set_threshold: bool = False,
        force: bool = False,
    ) -> dict[str, Any]:
        """Evaluate a checkpoint folder with this trainer's data lists: :func:`mvector.evaluation.model_eval.
        evaluate_model_folder`, which ``eval.py`` runs too.

        The checkpoint's model configuration is used; the metrics go to ``MODEL/evaluations/``, and
        ``set_threshold`` also stores them as the folder's ``result.json`` (its operating point, as
        ``mvector eval --set_threshold``), refused from fewer than 10 speakers or 300 non-target trials unless
        ``force``.
        """
        from mvector.evaluation.model_eval import evaluate_model_folder

        if resume_model is None:
            raise ConfigError(
                "evaluate needs resume_model: a model folder such as models/EcapaTdnn_MelSpectrogram/best_model"
            )
        run = evaluate_model_folder(
            resume_model,
            configs=self.configs,
            use_gpu=self.ctx.device.type == "cuda",
            backend="torch",
            cohort_list=cohort_list,
            asnorm_top_k=asnorm_top_k,
            save_image_path=save_image_path,
            set_threshold=set_threshold,
            force=force,
        )
        for note in run.notes:
            self.log(f"note: {note}")
        return run.metrics
