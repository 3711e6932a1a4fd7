"""Lists for VoxCeleb1/2: ``<root>/wav/<id>/<video>/<n>.wav``, with an official trial list such as
``veri_test2.txt`` as the test set when given (``create_data.py voxceleb --trials_file ...``).

>>> import tempfile
>>> prepare_voxceleb("/no/such/vox", tempfile.mkdtemp())
Traceback (most recent call last):
...
mvector.errors.DataListError: VoxCeleb root not found: /no/such/vox
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from mvector.data.corpora.common import (
    CONVERT_HINT,
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

__all__ = ["prepare_voxceleb"]


def _vox_audio_dir(root: Path) -> Path:
    for candidate in (root / "wav", root / "aac", root / "dev" / "aac", root / "dev" / "wav"):
        if candidate.is_dir():
            return candidate
    return root


def prepare_voxceleb(
    root: PathLike | Sequence[PathLike],
    output_dir: PathLike,
    test_ratio: float = 0.1,
    test_speakers: int | None = None,
    num_trials: int | None = None,
    seed: int = 0,
    paths: str = "inside",
    check_audio: bool = False,
    num_workers: int | None = None,
    trials_file: PathLike | None = None,
) -> PreparedData:
    """Lists for VoxCeleb1/2 (``root`` may be several corpus folders, e.g. VoxCeleb1 and VoxCeleb2 dev).

    Audio is ``<root>/wav/<id>/<youtube id>/<n>.wav`` (also ``aac/`` or ``dev/aac/``, or ``root`` itself).
    VoxCeleb2 ships AAC ``.m4a``, which soundfile cannot read: those files are reported as skipped and must
    be converted to wav first (e.g. with ffmpeg). ``trials_file`` is an official list such as
    ``veri_test2.txt``, ``list_test_hard2.txt`` or ``list_test_all2.txt`` (``label path1 path2``, paths
    relative to ``wav/``; found as given or inside a root): its files form the test list, every speaker in it
    is kept out of training, and its trials are written (``num_trials`` subsamples them). Without it the
    speakers are split and trials generated as for folders.

    >>> import tempfile
    >>> prepare_voxceleb("/no/such/vox", tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    mvector.errors.DataListError: VoxCeleb root not found: /no/such/vox
    """
    roots = [require_dir(r, "VoxCeleb root") for r in as_roots(root)]
    audio_dirs = [_vox_audio_dir(r) for r in roots]
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    found: list[tuple[str, str]] = []
    for folder in audio_dirs:
        found += scan_speaker_tree(folder, skipped, notes, exclude=[Path(output_dir)])
    if not found:
        m4a = sum(1 for p, _ in skipped if p.lower().endswith(".m4a"))
        hint = f"; {m4a} .m4a file(s) found: {CONVERT_HINT}" if m4a else ""
        raise DataListError(f"no readable audio found under {', '.join(map(str, audio_dirs))}{hint}")

    if trials_file is None:
        records = filter_readable(found, check_audio, num_workers, skipped)
        return split_and_write(
            output_dir, records, skipped, notes, test_ratio, test_speakers, num_trials, seed, paths
        )

    trial_path = _find_trials_file(trials_file, roots)
    pairs = []
    missing: set[str] = set()
    for number, (label_text, first, second) in read_fields(trial_path, 3):
        label = trial_label(label_text, f"{trial_path}:{number}")
        resolved = []
        for rel in (first, second):
            hit = next((os.path.join(d, rel) for d in audio_dirs if os.path.isfile(os.path.join(d, rel))), None)
            if hit is None and rel not in missing:
                missing.add(rel)
                skipped.append((rel, f"listed in {trial_path.name}:{number} but not found under the audio folders"))
            resolved.append(hit)
        if resolved[0] and resolved[1]:
            pairs.append(
                (
                    label,
                    os.path.abspath(resolved[0]),
                    _first_part(first),
                    os.path.abspath(resolved[1]),
                    _first_part(second),
                )
            )
    if not pairs:
        raise DataListError(f"{trial_path}: none of its trials point at files under {', '.join(map(str, audio_dirs))}")
    test, trials, dropped = official_evaluation(pairs, check_audio, num_workers, skipped)
    if dropped:
        notes.append(f"{dropped} official trial(s) dropped because a file is missing or unreadable")
    trial_speakers = {p[2] for p in pairs} | {p[4] for p in pairs}
    train = filter_readable([r for r in found if r[1] not in trial_speakers], check_audio, num_workers, skipped)
    return write_prepared(
        output_dir, train, test, skipped, notes, num_trials, seed, official_trials=trials, paths=paths
    )


def _first_part(rel: str) -> str:
    return rel.replace("\\", "/").split("/")[0]


def _find_trials_file(trials_file: PathLike, roots: Sequence[Path]) -> Path:
    given = Path(trials_file)
    if given.is_file():
        return given
    if not given.is_absolute():
        for r in roots:
            for candidate in (r / given, r / "meta" / given):
                if candidate.is_file():
                    return candidate
    raise DataListError(
        f"trials file not found: {trials_file} (looked as given and inside {', '.join(map(str, roots))})"
    )
