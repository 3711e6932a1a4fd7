"""Classifier heads with margin losses (AAM, AM, ARM, CE) and a margin scheduler.

A head owns the class-weight matrix and turns embeddings into a loss. The margin heads follow the
"cosines out, margin in the loss" layout: the head computes the cosine between each (L2-normalised) embedding
and each (L2-normalised) class weight; the loss then applies the margin to the target class only and takes a
softmax cross-entropy. ``forward`` returns ``(loss, logits)`` where ``logits`` are the scaled cosines
*without* margin, which is what classification accuracy should be measured on.

======  ===============================================================  ==================================
name    target logit / loss                                              reference
======  ===============================================================  ==================================
AAM     ``s·cos(θ_y + m)`` (ArcFace)                                     Deng et al., CVPR 2019
AM      ``s·(cos θ_y − m)`` (CosFace / AM-Softmax)                       H. Wang et al.; F. Wang et al., 2018
ARM     ``log(1 + Σ_{j≠y} exp(s·max(0, cos θ_j − cos θ_y + m)))``       Li, Nai & Wang, ICASSP 2022
CE      plain linear layer ``W·x + b`` with softmax cross-entropy        (x-vector style softmax training)
======  ===============================================================  ==================================

``loss_conf`` keys (all optional):

- ``margin`` (0.2): the additive margin ``m`` (radians for AAM, cosine units for AM and ARM).
- ``scale`` (32): the logit scale ``s``.
- ``easy_margin`` (False): AAM only. True applies the angular margin only where ``cos θ_y > 0`` and leaves
  the target logit at ``s·cos θ_y`` elsewhere. False (the default) keeps the target logit decreasing over the
  whole range ``θ ∈ [0, π]``: where ``θ_y + m`` would pass π, ``cos(θ_y + m)`` is replaced by
  ``cos θ_y − m·sin m``. ``easy_margin: true`` with any other loss is a :class:`~mvector.errors.ConfigError`;
  ``false`` is accepted everywhere so one config can switch ``use_loss``.
- ``label_smoothing`` (0.0): label smoothing of the cross-entropy, applied to the margin-adjusted logits.
- ``sub_centers`` (1): ``K > 1`` gives sub-center heads (Deng et al., ECCV 2020): each class has ``K`` weight
  rows and its cosine is the largest of the ``K``. Allowed for AAM, AM and ARM (the margin is applied to the
  pooled cosine); not for CE.
- ``inter_top_k`` (0) and ``inter_margin`` (0.06): the inter-top-k penalty (Zhao et al., "Multi-query multi-head
  attention pooling and inter-topk penalty for speaker verification", ICASSP 2022): the ``inter_top_k``
  non-target classes with the highest cosines of each sample are made harder by ``inter_margin`` (AAM:
  ``s·cos(θ_j − m')``, where ``θ_j > m'``; AM and ARM: ``s·(cos θ_j + m')``), so the loss keeps pushing the
  nearest impostor classes away, where a plain margin is already satisfied. 0 turns it off; not for CE; with
  fewer classes than ``inter_top_k + 1`` every non-target class is penalised.

The CE head is an ordinary (un-normalised) linear classifier; it accepts ``margin`` and ``scale`` so a config
written for a margin loss still loads, but they have no effect there (its ``update`` only records the value).

Labels are checked against ``num_speakers``: see :meth:`MarginHead.forward`.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> head = build_head("AAM", embd_dim=16, num_speakers=4, margin=0.2, scale=32)
>>> loss, logits = head(torch.randn(3, 16), torch.tensor([0, 1, 3]))
>>> loss.ndim, tuple(logits.shape)
(0, (3, 4))
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mvector.errors import ConfigError, DataListError, check_keys
from mvector.models.registries import HEADS

__all__ = [
    "MarginHead",
    "AAMHead",
    "AMHead",
    "ARMHead",
    "CEHead",
    "HEADS",
    "LOSS_CONF_KEYS",
    "build_head",
    "MarginScheduler",
]

#: Keys ``build_head`` accepts in ``loss_conf`` (the trainer removes ``margin_scheduler`` before the call).
LOSS_CONF_KEYS = ("margin", "scale", "easy_margin", "label_smoothing", "sub_centers", "inter_top_k", "inter_margin")

# Lower bound of 1 - cos² inside the square root of the AAM margin: keeps d(sin θ)/d(cos θ) finite
# (at most ~1/sqrt(eps)) when a cosine reaches ±1, where sqrt would otherwise give an infinite slope.
_SIN2_EPS = 1e-7


class MarginHead(nn.Module):
    """Base class of the classifier heads: owns ``weight`` ``[num_speakers * sub_centers, embd_dim]``.

    Subclasses implement :meth:`margin_logits` (cosines and labels → logits fed to the cross-entropy).
    Rows ``c*K .. c*K+K-1`` of ``weight`` are the ``K`` sub-centers of class ``c``.

    >>> head = AMHead(8, 3, margin=0.3, scale=10)
    >>> tuple(head.weight.shape), head.margin, head.scale
    ((3, 8), 0.3, 10.0)
    >>> head.update(0.1); head.margin
    0.1
    """

    #: Whether ``easy_margin: true`` means something for this head.
    supports_easy_margin = False
    #: Whether ``sub_centers > 1`` is allowed for this head.
    supports_sub_centers = True

    def __init__(
        self,
        embd_dim: int,
        num_speakers: int,
        margin: float = 0.2,
        scale: float = 32.0,
        easy_margin: bool = False,
        label_smoothing: float = 0.0,
        sub_centers: int = 1,
        inter_top_k: int = 0,
        inter_margin: float = 0.06,
    ):
        super().__init__()
        name = type(self).__name__
        for key, value in (("embd_dim", embd_dim), ("num_speakers", num_speakers), ("sub_centers", sub_centers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: {key} must be a positive integer, got {value!r}")
        if isinstance(inter_top_k, bool) or not isinstance(inter_top_k, int) or inter_top_k < 0:
            raise ConfigError(f"{name}: inter_top_k must be an integer >= 0, got {inter_top_k!r}")
        if inter_top_k and not self.supports_sub_centers:
            raise ConfigError(f"{name}: inter_top_k applies to the margin losses (AAM, AM, ARM), not to CE")
        if not _is_number(inter_margin) or not 0.0 <= inter_margin < 1.0:
            raise ConfigError(f"{name}: inter_margin must be a number in [0, 1), got {inter_margin!r}")
        if sub_centers > 1 and not self.supports_sub_centers:
            raise ValueError(f"sub_centers: {name} does not support sub-centers (use AAM, AM or ARM)")
        if not isinstance(easy_margin, bool):
            raise ValueError(f"easy_margin must be true or false, got {easy_margin!r}")
        if easy_margin and not self.supports_easy_margin:
            raise ValueError(f"easy_margin applies to the AAM loss only, not to {name}; set it to false")
        if not _is_number(scale) or not scale > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        if not _is_number(label_smoothing) or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.embd_dim = embd_dim
        self.num_speakers = num_speakers
        self.sub_centers = sub_centers
        self.scale = float(scale)
        self.easy_margin = easy_margin
        self.label_smoothing = float(label_smoothing)
        self.inter_top_k = int(inter_top_k)
        self.inter_margin = float(inter_margin)
        self.margin = 0.0
        self.weight = nn.Parameter(torch.empty(num_speakers * sub_centers, embd_dim))
        nn.init.xavier_normal_(self.weight)
        self._pending_label_checks: list[tuple[torch.Tensor, Any]] = []
        self.update(margin)

    # ------------------------------------------------------------------ margin
    def update(self, margin: float) -> None:
        """Set the current margin (the :class:`MarginScheduler` hook).

        >>> head = build_head("AM", 4, 2)
        >>> head.update(0.35); head.margin
        0.35
        """
        if not _is_number(margin) or not margin >= 0 or math.isinf(margin):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        self.margin = float(margin)

    # ------------------------------------------------------------------ forward
    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine between each embedding and each class ``[B, num_speakers]`` (max over sub-centers), float32.

        >>> head = build_head("AAM", 2, 2)
        >>> with torch.no_grad():
        ...     _ = head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        >>> head.cosine(torch.tensor([[3.0, 3.0]])).tolist()  # doctest: +ELLIPSIS
        [[0.707..., 0.707...]]
        """
        cos = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        if self.sub_centers > 1:
            cos = cos.view(cos.shape[0], self.num_speakers, self.sub_centers).amax(dim=2)
        return cos

    def class_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Logits without margin ``[B, num_speakers]``: ``scale · cosine`` (CE: the linear layer's output).

        >>> build_head("AM", 4, 3).class_logits(torch.ones(2, 4)).shape
        torch.Size([2, 3])
        """
        return self.scale * self.cosine(embeddings)

    def margin_logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits with the margin applied to the target class; the loss is their cross-entropy."""
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss (scalar, mean over the batch) and margin-free logits ``[B, num_speakers]``.

        Labels must lie in ``0 .. num_speakers-1``. On the CPU a bad label raises
        :class:`~mvector.errors.DataListError` at once. On CUDA the check is asynchronous so the training step
        never waits for the GPU: the range test is copied to pinned host memory behind a CUDA event, bad labels
        are clamped for this step's cross-entropy (no device-side assert that would wreck the CUDA context), and
        the :class:`DataListError` is raised by a later ``forward`` once the event has completed, or by
        :meth:`check_labels` (which waits). Other devices check at once (one small synchronisation).

        >>> head = build_head("AM", 4, 3)
        >>> head(torch.ones(2, 4), torch.tensor([0, 3]))
        Traceback (most recent call last):
        ...
        mvector.errors.DataListError: speaker label 3 is out of range: the classifier has num_speakers=3 ...
        """
        self._check_shapes(embeddings, labels)
        labels = self._validated_labels(labels)
        with _autocast_off(embeddings.device.type):
            logits, adjusted = self._logits(embeddings, labels)
            loss = F.cross_entropy(adjusted, labels, label_smoothing=self.label_smoothing)
        return loss, logits

    def _logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cosine(embeddings)
        adjusted = self.margin_logits(cos, labels)
        if self.inter_top_k:
            adjusted = self._inter_top_k_penalty(cos, labels, adjusted)
        return self.scale * cos, adjusted

    def _inter_top_k_penalty(
        self, cosine: torch.Tensor, labels: torch.Tensor, adjusted: torch.Tensor
    ) -> torch.Tensor:
        """``adjusted`` with the ``inter_top_k`` highest non-target cosines of each row made harder by
        ``inter_margin`` (:meth:`harder_non_target`); the target column is left as the margin set it."""
        k = min(self.inter_top_k, self.num_speakers - 1)  # a 2-class head has one non-target class
        if k < 1:
            return adjusted
        others = cosine.scatter(1, labels[:, None], float("-inf"))
        top = others.topk(k, dim=1).indices
        harder = self.scale * self.harder_non_target(cosine.gather(1, top))
        if isinstance(self, ARMHead):  # ARM's non-target logits are max(s·cos θ_j, target): keep that floor
            harder = torch.maximum(harder, adjusted.gather(1, top))
        return adjusted.scatter(1, top, harder)

    def harder_non_target(self, cosine: torch.Tensor) -> torch.Tensor:
        """The inter-top-k penalty on non-target cosines: ``cos θ + m'`` (AM, ARM; AAM overrides it).

        >>> head = build_head("AM", 2, 3, inter_top_k=1, inter_margin=0.1)
        >>> head.harder_non_target(torch.tensor([0.5])).tolist()  # doctest: +ELLIPSIS
        [0.6...]
        """
        return cosine + self.inter_margin

    # ------------------------------------------------------------------ label checks
    def check_labels(self) -> None:
        """Wait for pending asynchronous (CUDA) label checks and raise if one found a bad label.

        >>> build_head("AAM", 4, 2).check_labels()  # nothing pending
        """
        pending, self._pending_label_checks = self._pending_label_checks, []
        for host, event in pending:
            event.synchronize()
            self._raise_if_bad(host)

    def _check_shapes(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or embeddings.shape[1] != self.embd_dim:
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise ValueError(f"{name}: embeddings must have shape [batch, {self.embd_dim}], got {shape}")
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"{name}: labels must have shape [{embeddings.shape[0]}] (one per embedding), got {shape}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"{name}: labels must be an integer tensor, got {labels.dtype}")

    def _validated_labels(self, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long()
        if labels.numel() == 0:
            return labels
        if labels.device.type == "cuda":
            # Raise what earlier steps found, without waiting for work still in flight.
            while self._pending_label_checks and self._pending_label_checks[0][1].query():
                self._raise_if_bad(self._pending_label_checks.pop(0)[0])
            lo, hi = torch.aminmax(labels)
            stats = torch.stack([lo, hi])
            host = torch.empty(2, dtype=torch.long, pin_memory=True)
            host.copy_(stats, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending_label_checks.append((host, event))
            return labels.clamp(0, self.num_speakers - 1)
        lo, hi = torch.aminmax(labels)
        self._raise_if_bad(torch.stack([lo, hi]).cpu())
        return labels

    def _raise_if_bad(self, stats: torch.Tensor) -> None:
        lo, hi = int(stats[0]), int(stats[1])
        bad = lo if lo < 0 else hi if hi >= self.num_speakers else None
        if bad is not None:
            raise DataListError(
                f"speaker label {bad} is out of range: the classifier has num_speakers={self.num_speakers} "
                f"(labels 0..{self.num_speakers - 1}); check dataset_conf.num_speakers against the train list"
            )

    def __getstate__(self) -> dict[str, Any]:
        # Pending CUDA label checks hold events that cannot be copied; a copy starts with none.
        state = self.__dict__.copy()
        state["_pending_label_checks"] = []
        return state

    def extra_repr(self) -> str:
        extra = f", sub_centers={self.sub_centers}" if self.sub_centers > 1 else ""
        if self.inter_top_k:
            extra += f", inter_top_k={self.inter_top_k}, inter_margin={self.inter_margin:g}"
        return (
            f"embd_dim={self.embd_dim}, num_speakers={self.num_speakers}, margin={self.margin:g}, "
            f"scale={self.scale:g}, label_smoothing={self.label_smoothing:g}{extra}"
        )


@HEADS.register("AAM", aliases=("ArcFace", "AAMLoss"))
class AAMHead(MarginHead):
    """Additive angular margin (ArcFace, Deng et al., CVPR 2019): target logit ``s·cos(θ_y + m)``.

    ``cos(θ + m)`` is computed as ``cos θ·cos m − sin θ·sin m`` with ``sin θ = sqrt(max(1 − cos² θ, 1e-7))``,
    so the gradient stays finite when a cosine is exactly ±1 (no ``acos``). See the module docstring for
    ``easy_margin``.

    >>> head = AAMHead(2, 2, margin=0.5, scale=1.0)
    >>> cos = torch.tensor([[0.6, 0.0]])
    >>> head.margin_logits(cos, torch.tensor([0])).tolist()  # cos(acos(0.6) + 0.5)  # doctest: +ELLIPSIS
    [[0.1430..., 0.0]]
    """

    supports_easy_margin = True

    def margin_logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = cosine.gather(1, labels[:, None])
        m = self.margin
        sin = torch.sqrt((1.0 - target * target).clamp(min=_SIN2_EPS))
        shifted = target * math.cos(m) - sin * math.sin(m)
        if self.easy_margin:
            shifted = torch.where(target > 0, shifted, target)
        else:
            # Past θ = π - m, cos(θ + m) would turn back up; continue with a linear penalty instead.
            shifted = torch.where(target > math.cos(math.pi - m), shifted, target - m * math.sin(m))
        return self.scale * cosine.scatter(1, labels[:, None], shifted)

    def harder_non_target(self, cosine: torch.Tensor) -> torch.Tensor:
        """``cos(θ − m')`` for non-target angles ``θ > m'``, ``1`` where ``θ <= m'`` (the angle cannot go below 0).

        >>> head = build_head("AAM", 2, 3, inter_top_k=1, inter_margin=0.1)
        >>> head.harder_non_target(torch.tensor([0.6, 1.0])).tolist()  # cos(acos(0.6) - 0.1), 1  # doctest: +ELLIPSIS
        [0.676..., 1.0]
        """
        m = self.inter_margin
        sin = torch.sqrt((1.0 - cosine * cosine).clamp(min=_SIN2_EPS))
        return torch.where(cosine < math.cos(m), cosine * math.cos(m) + sin * math.sin(m), torch.ones_like(cosine))


@HEADS.register("AM", aliases=("CosFace", "AMLoss"))
class AMHead(MarginHead):
    """Additive (cosine) margin (CosFace / AM-Softmax): target logit ``s·(cos θ_y − m)``.

    >>> head = AMHead(2, 2, margin=0.2, scale=10.0)
    >>> head.margin_logits(torch.tensor([[0.5, 0.1]]), torch.tensor([0])).tolist()  # doctest: +ELLIPSIS
    [[3.0..., 1.0...]]
    """

    def margin_logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = cosine.gather(1, labels[:, None])
        return self.scale * cosine.scatter(1, labels[:, None], target - self.margin)


@HEADS.register("ARM", aliases=("ARMLoss",))
class ARMHead(MarginHead):
    """Real additive margin softmax (ARM-Softmax; L. Li, R. Nai, D. Wang, "Real Additive Margin Softmax for
    Speaker Verification", ICASSP 2022, arXiv:2110.09116).

    AM-Softmax can be written as ``log(1 + Σ_{j≠y} exp(s·(cos θ_j − cos θ_y + m)))``: every non-target class
    keeps pushing even when it is already more than ``m`` below the target, so the margin is not a real one.
    ARM-Softmax clips each exponent at zero::

        L = log(1 + Σ_{j≠y} exp(s · max(0, cos θ_j − cos θ_y + m)))

    so only non-target classes that violate the margin contribute a gradient (a satisfied class adds the
    constant 1; the loss floor is ``log(num_speakers)``, not 0). It is computed as the cross-entropy of the
    logits ``s·(cos θ_y − m)`` for the target and ``max(s·cos θ_j, s·(cos θ_y − m))`` for the others, which
    is algebraically the formula above.

    >>> head = ARMHead(2, 3, margin=0.2, scale=10.0)
    >>> cos = torch.tensor([[0.5, 0.4, 0.0]])   # class 1 violates the margin (0.4 > 0.5 - 0.2), class 2 does not
    >>> head.margin_logits(cos, torch.tensor([0])).tolist()  # doctest: +ELLIPSIS
    [[3.0..., 4.0..., 3.0...]]
    """

    def margin_logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = self.scale * (cosine.gather(1, labels[:, None]) - self.margin)
        others = torch.maximum(self.scale * cosine, target)
        return others.scatter(1, labels[:, None], target)


@HEADS.register("CE", aliases=("Softmax", "CELoss"))
class CEHead(MarginHead):
    """Plain softmax classifier: a linear layer ``W·x + b`` (not normalised) and cross-entropy.

    ``margin`` and ``scale`` have no effect here (accepted for config compatibility); the logits it returns
    are the linear layer's output. ``sub_centers > 1`` and ``easy_margin: true`` are errors.

    >>> head = CEHead(4, 3)
    >>> tuple(head.bias.shape), head.class_logits(torch.zeros(2, 4)).abs().max().item()
    ((3,), 0.0)
    """

    supports_sub_centers = False

    def __init__(self, embd_dim: int, num_speakers: int, **kwargs: Any):
        ignored = sorted(k for k in ("margin", "scale") if k in kwargs)
        if ignored:
            warnings.warn(
                f"loss_conf {' and '.join(ignored)} have no effect with the CE loss (a plain softmax classifier)",
                stacklevel=2,
            )
        super().__init__(embd_dim, num_speakers, **kwargs)
        self.bias = nn.Parameter(torch.zeros(num_speakers))

    def class_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(embeddings.float(), self.weight.float(), self.bias.float())

    def margin_logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cosine  # here ``cosine`` is the linear output: CE has no margin

    def _logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.class_logits(embeddings)
        return out, out


def build_head(loss_name: str, embd_dim: int, num_speakers: int, **loss_conf: Any) -> MarginHead:
    """Build the classifier head ``loss_name`` for ``num_speakers`` classes over ``embd_dim``-dim embeddings.

    Names: ``AAM`` (ArcFace), ``AM`` (CosFace), ``ARM``, ``CE``; case-insensitive, with or without a ``Loss``
    suffix (``AAMLoss``), and ``ArcFace``/``CosFace``/``Softmax`` as aliases. ``loss_conf`` keys: see the module
    docstring; an unknown key is a :class:`~mvector.errors.ConfigError` naming the nearest valid one.

    >>> build_head("aamloss", 192, 10, margin=0.2, scale=32)
    AAMHead(embd_dim=192, num_speakers=10, margin=0.2, scale=32, label_smoothing=0)
    >>> build_head("AAM", 192, 10, margine=0.3)
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: unknown key 'margine' in loss_conf (AAM); did you mean 'margin'? ...
    >>> build_head("Arc", 192, 10)
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: unknown loss 'Arc'... Valid: AAM, AM, ARM, CE
    """
    canonical = HEADS.resolve(str(loss_name).strip())
    check_keys(loss_conf, LOSS_CONF_KEYS, f"loss_conf ({canonical})")
    return HEADS.build(canonical, loss_conf, embd_dim, num_speakers)


class MarginScheduler:
    """Grow a head's margin linearly from ``initial_margin`` to ``final_margin`` over ``[start_step, end_step]``.

    Before ``start_step`` the margin is ``initial_margin``, from ``end_step`` on it is ``final_margin``, and in
    between it moves linearly (a linear ramp is predictable and easy to reason about; starting small lets the
    classifier settle before the full margin makes the task hard). Steps are global optimizer steps; call
    :meth:`step` every step (and once after resuming) — it sets the margin with ``head.update`` and returns it.

    >>> head = build_head("AAM", 8, 4)
    >>> sched = MarginScheduler(head, initial_margin=0.0, final_margin=0.2, start_step=10, end_step=20)
    >>> [round(sched.step(s), 3) for s in (0, 10, 15, 20, 99)]
    [0.0, 0.0, 0.1, 0.2, 0.2]
    >>> head.margin
    0.2
    """

    def __init__(
        self,
        head: MarginHead,
        initial_margin: float,
        final_margin: float,
        start_step: int,
        end_step: int,
    ):
        for key, value in (("initial_margin", initial_margin), ("final_margin", final_margin)):
            if not _is_number(value) or not value >= 0 or math.isinf(value):
                raise ValueError(f"margin_scheduler.{key} must be a finite number >= 0, got {value!r}")
        if int(start_step) < 0 or int(end_step) < int(start_step):
            raise ConfigError(
                f"margin scheduler: need 0 <= start_step <= end_step, got start_step={start_step}, "
                f"end_step={end_step} (check loss_conf.margin_scheduler.start_epoch / end_epoch)"
            )
        self.head = head
        self.initial_margin = float(initial_margin)
        self.final_margin = float(final_margin)
        self.start_step = int(start_step)
        self.end_step = int(end_step)

    def margin_at(self, global_step: int) -> float:
        """The margin for ``global_step`` (does not touch the head).

        >>> sched = MarginScheduler(build_head("AM", 4, 2), 0.1, 0.3, 0, 4)
        >>> round(sched.margin_at(1), 3)
        0.15
        """
        if global_step >= self.end_step:
            return self.final_margin
        if global_step <= self.start_step:
            return self.initial_margin
        frac = (global_step - self.start_step) / (self.end_step - self.start_step)
        return self.initial_margin + frac * (self.final_margin - self.initial_margin)

    def step(self, global_step: int) -> float:
        """Set the head's margin for ``global_step`` and return it."""
        margin = self.margin_at(int(global_step))
        self.head.update(margin)
        return margin


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


class _autocast_off:
    """Run the head in float32 even inside an autocast region (margins need the precision)."""

    def __init__(self, device_type: str):
        self.ctx = torch.autocast(device_type=device_type, enabled=False) if device_type in ("cuda", "cpu") else None

    def __enter__(self) -> None:
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
