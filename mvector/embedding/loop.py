"""The one embedding loop: batches of padded waveforms through an embedder, into an ``[N, D]`` array.

Used by evaluation (files through a data loader), the predictor (decoded recordings), every backend and the
benchmarks. An embedder is anything callable as ``embedder(waves [B, T], lengths [B])`` — a
:class:`~mvector.embedding.backends.Embedder` (numpy out) or a waveform→embedding ``torch.nn.Module`` such as
:class:`~mvector.models.EmbeddingModel` (run in inference mode on its own device). A recording gets the same
embedding whether it is embedded alone or inside a padded batch, because featurizers and backbones are
length-masked; batching by length only saves padding work.

>>> import numpy as np, torch
>>> from mvector.features import build_featurizer
>>> from mvector.models import EmbeddingModel, build_backbone
>>> fz = build_featurizer("Fbank", {"num_mel_bins": 40})
>>> model = EmbeddingModel(fz, build_backbone("TDNN", fz.feature_dim, channels=32, embd_dim=16)).eval()
>>> rng = np.random.default_rng(0)
>>> waves = [rng.standard_normal(n).astype("float32") * 0.1 for n in (8000, 16000, 12000)]
>>> together = embed_waveforms(model, waves, batch_size=3)
>>> alone = embed_waveforms(model, waves[:1], batch_size=1)
>>> together.shape, bool(np.abs(together[0] - alone[0]).max() < 1e-4)
((3, 16), True)
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from mvector.errors import AudioError, ConfigError

__all__ = [
    "pad_waveforms",
    "length_batches",
    "run_embedder",
    "embed_batches",
    "embed_waveforms",
    "min_samples_of",
    "check_min_length",
    "warn_silent",
]

_BATCH_INDEX = re.compile(r"clip\(s\) at batch index \[([0-9, ]*)\]")


def min_samples_of(embedder: Any) -> int | None:
    """The shortest input (in samples) ``embedder`` can embed: one analysis window of its featurizer; None if unknown.

    Looks at ``embedder.featurizer``, ``embedder.model.featurizer`` and, for an export, the featurizer its stored
    configuration describes.

    >>> from mvector.features import build_featurizer
    >>> from mvector.models import EmbeddingModel, build_backbone
    >>> fz = build_featurizer("Fbank", {"num_mel_bins": 40})
    >>> min_samples_of(EmbeddingModel(fz, build_backbone("TDNN", fz.feature_dim, channels=32, embd_dim=16)))
    400
    """
    for holder in (embedder, getattr(embedder, "model", None)):
        fz = getattr(holder, "featurizer", None)
        if fz is not None and getattr(fz, "min_samples", None):
            return int(fz.min_samples)
    config = getattr(embedder, "config", None)
    if isinstance(config, dict) and config.get("preprocess_conf"):
        try:
            from mvector.build import build_featurizer_for

            return int(build_featurizer_for(config).min_samples)
        except Exception:  # an unusual config: leave the check to the featurizer
            return None
    return None


#: Peak amplitude below which a waveform counts as digital silence (all zeros, or below 16-bit resolution).
SILENCE_PEAK = 1.0 / 65536


def warn_silent(waves: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[int]:
    """Warn (one ``UserWarning``) when waveforms are digital silence; returns their indices.

    An all-zero recording still gets an embedding, but it says nothing about a speaker: enrolling or matching it
    is almost certainly a mistake (a muted microphone, a failed conversion).

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_silent([np.ones(10, "float32"), np.zeros(10, "float32")], names=["a.wav", "b.wav"])
    [1]
    >>> str(caught[0].message)  # doctest: +ELLIPSIS
    'input 1 (b.wav) is digital silence (all zeros): its embedding says nothing about the speaker...'
    """
    silent = [i for i, w in enumerate(waves) if len(w) == 0 or float(np.max(np.abs(w))) < SILENCE_PEAK]
    if silent:
        shown = ", ".join(_describe(i, names) for i in silent[:5]) + (" ..." if len(silent) > 5 else "")
        verb = "is" if len(silent) == 1 else "are"
        warnings.warn(
            f"{shown} {verb} digital silence (all zeros): its embedding says nothing about the speaker; "
            "check the recording",
            UserWarning,
            stacklevel=3,
        )
    return silent


def _describe(index: int, names: Sequence[str] | None) -> str:
    return f"input {index} ({names[index]})" if names is not None else f"input {index}"


def check_min_length(
    lengths: Sequence[int], min_samples: int | None, sample_rate: int = 16000, names: Sequence[str] | None = None
) -> None:
    """Raise :class:`AudioError` naming every input (index in the caller's order, and name) shorter than one window.

    >>> check_min_length([8000, 100], 400, 16000, names=["a.wav", "b.wav"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mvector.errors.AudioError: input 1 (b.wav) is 100 samples (6.25 ms at 16000 Hz), shorter than one analysis ...
    """
    if not min_samples:
        return
    short = [i for i, n in enumerate(lengths) if int(n) < int(min_samples)]
    if not short:
        return
    window = f"one analysis window ({min_samples} samples = {1000 * min_samples / sample_rate:g} ms)"
    if len(short) == 1:
        i = short[0]
        n = int(lengths[i])
        raise AudioError(
            f"{_describe(i, names)} is {n} samples ({1000 * n / sample_rate:g} ms at {sample_rate} Hz), "
            f"shorter than {window}; use longer audio"
        )
    shown = ", ".join(_describe(i, names) for i in short[:10]) + (" ..." if len(short) > 10 else "")
    raise AudioError(f"{len(short)} inputs are shorter than {window}: {shown}; use longer audio")


def _remap_batch_error(err: AudioError, indices: Sequence[int], names: Sequence[str] | None) -> AudioError | None:
    """A featurizer's ``clip(s) at batch index [..]`` (positions in a length-sorted batch) in the caller's terms."""
    match = _BATCH_INDEX.search(str(err))
    if not match:
        return None
    rows = [int(x) for x in match.group(1).replace(" ", "").split(",") if x]
    inputs = [int(indices[r]) for r in rows if 0 <= r < len(indices)]
    shown = ", ".join(_describe(i, names) for i in inputs)
    text = _BATCH_INDEX.sub(f"{shown} (in the order given)", str(err), count=1)
    return AudioError(text)


def pad_waveforms(waves: Sequence[np.ndarray], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D float arrays into a ``[B, T]`` tensor and their lengths ``[B]`` (int64).

    >>> w, n = pad_waveforms([np.ones(3, "float32"), np.ones(5, "float32")])
    >>> tuple(w.shape), n.tolist()
    ((2, 5), [3, 5])
    """
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    batch = torch.zeros(len(waves), int(lengths.max()) if len(waves) else 0, dtype=torch.float32)
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return batch.to(device, non_blocking=True), lengths.to(device, non_blocking=True)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so little padding is computed.

    >>> length_batches([5, 1, 4, 2], 2)
    [[0, 2], [3, 1]]
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: -float(lengths[i]))
    return [order[i : i + int(batch_size)] for i in range(0, len(order), int(batch_size))]


def run_embedder(embedder: Callable[..., Any], waves: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    """One batch through ``embedder``: float32 numpy ``[B, D]`` (a torch module runs on its own device)."""
    if isinstance(embedder, torch.nn.Module):
        param = next(embedder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode():
            out = embedder(waves.to(device, non_blocking=True), lengths.to(device, non_blocking=True))
        return out.float().cpu().numpy()
    return np.asarray(embedder(waves, lengths), dtype=np.float32)


def embed_batches(
    embedder: Callable[..., Any],
    batches: Iterable[tuple[Sequence[int], torch.Tensor, torch.Tensor]],
    count: int,
    progress: Any = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Embed ``(indices, waves [B, T], lengths [B])`` batches into row ``indices`` of a float32 ``[count, D]`` array.

    Rows no batch wrote stay zero (the caller knows which inputs were unusable). ``progress`` is an optional
    callable given the number of rows done after each batch. A featurizer's complaint about a clip in a batch
    is re-raised naming the input's index in the caller's order (and ``names[index]`` when given), not its
    position in the length-sorted batch.

    >>> net = torch.nn.Linear(4, 2)
    >>> embedder = lambda w, n: w @ torch.ones(4, 3)
    >>> out = embed_batches(embedder, [([2, 0], torch.ones(2, 4), torch.tensor([4, 4]))], count=3)
    >>> out.tolist()
    [[4.0, 4.0, 4.0], [0.0, 0.0, 0.0], [4.0, 4.0, 4.0]]
    """
    out: np.ndarray | None = None
    done = 0
    for indices, waves, lengths in batches:
        if len(indices) == 0:
            continue
        try:
            emb = run_embedder(embedder, waves, lengths)
        except AudioError as err:
            mapped = _remap_batch_error(err, indices, names)
            if mapped is None:
                raise
            raise mapped from err
        if out is None:
            out = np.zeros((count, emb.shape[1]), dtype=np.float32)
        out[np.asarray(indices, dtype=np.int64)] = emb
        done += len(indices)
        if progress is not None:
            progress(done)
    return out if out is not None else np.zeros((count, 0), dtype=np.float32)


def embed_waveforms(
    embedder: Callable[..., Any],
    waves: Sequence[np.ndarray],
    batch_size: int = 32,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Embed 1-D waveforms, batched by length, returning float32 ``[N, D]`` in the input order.

    A torch module runs on the device of its parameters. A waveform
    shorter than one analysis window is an :class:`~mvector.errors.AudioError` naming its index in ``waves`` (and
    ``names[index]`` when given), checked before anything runs.
    """
    check_min_length(
        [len(w) for w in waves], min_samples_of(embedder), int(getattr(embedder, "sample_rate", 16000)), names
    )
    warn_silent(waves, names)

    def batches():
        for idx in length_batches([len(w) for w in waves], batch_size):
            batch, lengths = pad_waveforms([waves[i] for i in idx])
            yield idx, batch, lengths

    return embed_batches(embedder, batches(), len(waves), names=names)
