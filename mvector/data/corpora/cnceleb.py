"""Lists for CN-Celeb1 and CN-Celeb2: development speakers for training, the official enrolment list and trials
for testing when a root has them (``create_data.py cnceleb``).

>>> import tempfile
>>> prepare_cnceleb(tempfile.mkdtemp(), tempfile.mkdtemp())  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mvector.errors.DataListError: CN-Celeb data folder not found: .../data
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from mvector.data.corpora.common import (
    PathLike,
    PreparedData,
    as_roots,
    filter_readable,
    official_evaluation,
    read_fields,
    require_dir,
    scan_speaker_tree,
    split_and_write,
    trial_label,
    write_prepared,
)
from mvector.errors import DataListError

__all__ = ["prepare_cnceleb"]


def _existing_variant(path: str) -> str | None:
    """The file itself, or the same name with .flac/.wav swapped (CN-Celeb ships flac; its lists say .wav)."""
    if os.path.isfile(path):
        return path
    stem, _ = os.path.splitext(path)
    for ext in (".flac", ".wav"):
        if os.path.isfile(stem + ext):
            return stem + ext
    return None


def prepare_cnceleb(
    root: PathLike | Sequence[PathLike],
    output_dir: PathLike,
    test_ratio: float = 0.1,
    test_speakers: int | None = None,
    num_trials: int | None = None,
    seed: int = 0,
    paths: str = "inside",
    check_audio: bool = False,
    num_workers: int | None = None,
) -> PreparedData:
    """Lists for CN-Celeb1 and/or CN-Celeb2 (``root`` may be several corpus folders).

    Training audio is ``<root>/data/<speaker>/*.flac|wav`` for the development speakers: those in
    ``dev/dev.lst`` (CN-Celeb1) or ``spk.lst`` (CN-Celeb2), else every speaker not used in evaluation.
    The first root with ``eval/lists/enroll.lst`` (``<id>-enroll enroll/<id>-enroll.wav``) and
    ``eval/lists/trials.lst`` (``<id>-enroll test/<file>.wav <0|1>``) gives the official test list and
    trials (paths relative to ``eval/``; a listed ``.wav`` may be stored as ``.flac``); a given ``num_trials``
    subsamples them. Without official lists the speakers are split and trials generated as for folders.

    >>> import tempfile
    >>> prepare_cnceleb(tempfile.mkdtemp(), tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mvector.errors.DataListError: CN-Celeb data folder not found: .../data
    """
    roots = as_roots(root)
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    eval_pairs: list[tuple[int, str, str, str, str]] | None = None
    for r in roots:
        lists = r / "eval" / "lists"
        if eval_pairs is None and (lists / "trials.lst").is_file() and (lists / "enroll.lst").is_file():
            eval_pairs = _read_cnceleb_trials(r / "eval", lists, skipped)
    eval_speakers = {p[2] for p in eval_pairs} | {p[4] for p in eval_pairs} if eval_pairs else set()

    train: list[tuple[str, str]] = []
    for r in roots:
        data = require_dir(r / "data", "CN-Celeb data folder")
        for list_file in (r / "dev" / "dev.lst", r / "spk.lst"):
            if list_file.is_file():
                wanted = {
                    line.split()[0] for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()
                }
                break
        else:
            wanted = None
        found = scan_speaker_tree(data, skipped, notes)
        train += [rec for rec in found if (wanted is None or rec[1] in wanted) and rec[1] not in eval_speakers]
    if not train and eval_pairs is None:
        raise DataListError(f"no audio found under {', '.join(str(r / 'data') for r in roots)}")
    train = filter_readable(train, check_audio, num_workers, skipped)

    if eval_pairs is None:
        return split_and_write(
            output_dir, train, skipped, notes, test_ratio, test_speakers, num_trials, seed, paths
        )
    test, trials, dropped = official_evaluation(eval_pairs, check_audio, num_workers, skipped)
    if dropped:
        notes.append(f"{dropped} official trial(s) dropped because a file is missing or unreadable")
    return write_prepared(
        output_dir, train, test, skipped, notes, num_trials, seed, official_trials=trials, paths=paths
    )


def _read_cnceleb_trials(
    eval_dir: Path, lists: Path, skipped: list[tuple[str, str]]
) -> list[tuple[int, str, str, str, str]]:
    enroll: dict[str, str] = {}
    for number, (utt, rel) in read_fields(lists / "enroll.lst", 2):
        path = _existing_variant(os.path.abspath(os.path.join(eval_dir, rel)))
        if path is None:
            skipped.append(
                (os.path.abspath(os.path.join(eval_dir, rel)), f"listed in enroll.lst:{number} but not found")
            )
        else:
            enroll[utt] = path
    pairs = []
    missing_tests: set[str] = set()
    for number, (enroll_id, rel, label_text) in read_fields(lists / "trials.lst", 3):
        label = trial_label(label_text, f"{lists / 'trials.lst'}:{number}")
        if enroll_id not in enroll:
            continue
        listed = os.path.abspath(os.path.join(eval_dir, rel))
        test_path = _existing_variant(listed)
        if test_path is None:
            if listed not in missing_tests:
                missing_tests.add(listed)
                skipped.append((listed, f"listed in trials.lst:{number} but not found"))
            continue
        enroll_spk = enroll_id[: -len("-enroll")] if enroll_id.endswith("-enroll") else enroll_id
        test_spk = os.path.basename(rel).split("-")[0]
        pairs.append((label, enroll[enroll_id], enroll_spk, test_path, test_spk))
    return pairs
