"""Lists for any speaker folder tree: ``root/<speaker>/**/<audio file>`` (``create_data.py folder``).

Example: see :mod:`mvector.data.corpora`.
"""

from __future__ import annotations

from pathlib import Path

from mvector.data.corpora.common import (
    PathLike,
    PreparedData,
    filter_readable,
    readable_extensions,
    require_dir,
    scan_speaker_tree,
    single_file_note,
    split_and_write,
)
from mvector.errors import DataListError

__all__ = ["prepare_folder"]


def prepare_folder(
    root: PathLike,
    output_dir: PathLike,
    test_ratio: float = 0.1,
    test_speakers: int | None = None,
    num_trials: int | None = None,
    seed: int = 0,
    paths: str = "inside",
    check_audio: bool = False,
    num_workers: int | None = None,
) -> PreparedData:
    """Lists for any ``root/<speaker>/**/<audio file>`` tree; the speaker is the first-level folder name.

    Audio is every file soundfile can decode (see :func:`readable_extensions`); m4a/aac and similar are
    reported as skipped. The test speakers are chosen by :func:`split_speakers`; trials are generated
    from the test list by :func:`sample_trial_pairs`. ``output_dir`` is never scanned, even inside ``root``.
    Example: see the module docstring.

    >>> prepare_folder("/no/such/folder", "/tmp/out")
    Traceback (most recent call last):
    ...
    mvector.errors.DataListError: audio root not found: /no/such/folder
    """
    root = require_dir(Path(root), "audio root")
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    found = scan_speaker_tree(root, skipped, notes, exclude=[Path(output_dir)])
    if not found:
        raise DataListError(
            f"no audio found under {root}: expected {root}/<speaker>/.../<file> with one of "
            f"{', '.join(sorted(readable_extensions()))}"
            + (f" ({len(skipped)} unreadable-format file(s))" if skipped else "")
        )
    records = filter_readable(found, check_audio, num_workers, skipped)
    note = single_file_note(records, "corpus")
    if note:
        notes.append(note)
    return split_and_write(
        output_dir, records, skipped, notes, test_ratio, test_speakers, num_trials, seed, paths
    )
