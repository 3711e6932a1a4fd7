"""Evaluate a model folder (checkpoint or export) on a test or trial list: what ``eval.py`` / ``mvector eval`` run.

The data lists stored with the model are used unless others are given; the model's own configuration keys always
win. Results go to ``<model folder>/evaluations/<list name>.json``; the folder's operating point
(``result.json``, whose threshold the predictor uses) changes only when asked (``set_threshold=True``).

>>> import tempfile, pathlib
>>> from mvector.data.synthetic import generate_corpus
>>> from mvector.demo import tiny_checkpoint
>>> test_list = generate_corpus(tempfile.mkdtemp(), num_speakers=3, utterances_per_speaker=2, min_duration=1.0,
...                             max_duration=1.0)
>>> model = tiny_checkpoint(tempfile.mkdtemp())
>>> run = evaluate_model_folder(model, overrides={"dataset_conf.test_list": str(test_list)}, progress=False)
>>> run.metrics["num_trials"], run.written.name, run.operating_point_changed
(15, 'list.json', False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch

from mvector.build import merge_model_config, model_name
from mvector.config import load_config
from mvector.embedding.backends import Embedder, open_backend
from mvector.errors import ConfigError
from mvector.evaluation.evaluator import EvalSettings, Evaluator, default_num_workers
from mvector.utils.files import atomic_write_json

__all__ = ["EvaluationRun", "evaluate_model_folder", "run_config"]

PathLike = Union[str, os.PathLike]


@dataclass
class EvaluationRun:
    """What an evaluation produced: the metrics, where they were written, and the configuration used."""

    metrics: dict[str, Any]
    written: Path
    operating_point_changed: bool
    config: dict[str, Any]
    embedder: Embedder
    notes: list[str]


def run_config(
    stored: Mapping[str, Any],
    configs: Union[str, os.PathLike, Mapping[str, Any], None] = None,
    overrides: Union[Mapping[str, Any], Sequence[str], None] = None,
) -> tuple[dict[str, Any], list[str]]:
    """The configuration to evaluate with: ``configs`` (or the model's stored one) with ``overrides``, and the
    model's embedding keys on top; returns it with the differences that were overruled."""
    conf = load_config(dict(stored) if configs is None else configs, overrides, validate=False)
    return merge_model_config(conf, stored)


def evaluate_model_folder(
    model_path: PathLike,
    configs: Union[str, os.PathLike, Mapping[str, Any], None] = None,
    overrides: Union[Mapping[str, Any], Sequence[str], None] = None,
    use_gpu: bool = False,
    backend: str = "auto",
    cohort_list: PathLike | None = None,
    asnorm_top_k: int = 300,
    save_image_path: PathLike | None = None,
    set_threshold: bool = False,
    output: PathLike | None = None,
    progress: bool = True,
) -> EvaluationRun:
    """Evaluate ``model_path``; see the module docstring. ``output`` overrides where the metrics JSON goes."""
    if use_gpu and not torch.cuda.is_available():
        raise ConfigError("use_gpu is set but no CUDA device is available; pass --use_gpu False")
    device = torch.device("cuda" if use_gpu else "cpu")
    embedder = open_backend(model_path, backend, device)
    conf, diffs = run_config(embedder.config, configs, overrides)
    notes = [f"using the model configuration stored in {embedder.folder} ({'; '.join(diffs)})"] if diffs else []
    ds = conf["dataset_conf"]
    evaluator = Evaluator(embedder, EvalSettings.from_dataset_conf(ds, default_num_workers(device)), progress)
    metrics = evaluator.evaluate(
        ds["test_list"], ds["trials_list"], ds["trials_root"], ds["num_eval_trials"], cohort_list, asnorm_top_k,
        save_image_path, title=model_name(conf),
    )
    source = ds["trials_list"] or ds["test_list"]
    metrics["evaluated_on"] = str(source)
    written = Path(output) if output else embedder.folder / "evaluations" / f"{Path(str(source)).stem}.json"
    atomic_write_json(written, metrics)
    if set_threshold:
        atomic_write_json(embedder.folder / "result.json", metrics)
    return EvaluationRun(metrics, written, set_threshold, conf, embedder, notes)
