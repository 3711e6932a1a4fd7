"""Lists for zhvoice: ``root/text/infodata.json`` names each mp3 and its speaker; the mp3 files can be converted
to wav on the way (``create_data.py zhvoice --convert_wav``).

>>> import tempfile
>>> prepare_zhvoice(tempfile.mkdtemp(), tempfile.mkdtemp())  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mvector.errors.DataListError: zhvoice infodata.json not found: .../text/infodata.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import soundfile as sf

from mvector.data.corpora.common import (
    PathLike,
    PreparedData,
    convert_to_wav,
    filter_readable,
    numbered_lines,
    parallel_map,
    require_dir,
    split_and_write,
)
from mvector.errors import AudioError, DataListError

__all__ = ["prepare_zhvoice"]


def _read_infodata(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for number, line in numbered_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataListError(f"{path}:{number}: not a JSON object ({err.msg})") from err
        if not isinstance(row, dict) or "index" not in row or "speaker" not in row:
            raise DataListError(f"{path}:{number}: expected an object with 'index' (mp3 path) and 'speaker'")
        rows.append((number, row))
    return rows


def prepare_zhvoice(
    root: PathLike,
    output_dir: PathLike,
    test_ratio: float = 0.1,
    test_speakers: int | None = None,
    num_trials: int | None = None,
    seed: int = 0,
    paths: str = "inside",
    check_audio: bool = False,
    num_workers: int | None = None,
    convert_wav: bool = False,
    wav_dir: PathLike | None = None,
    sample_rate: int = 16000,
    infodata: PathLike | None = None,
) -> PreparedData:
    """Lists for zhvoice: ``root/text/infodata.json`` holds one JSON object per line with ``index`` (the mp3
    path relative to ``root``) and ``speaker``.

    ``convert_wav`` decodes every mp3 to a mono ``sample_rate`` wav, next to it (same name, ``.wav``) or under
    ``wav_dir`` keeping the relative layout, in ``num_workers`` threads; the mp3 files are kept, an existing
    readable wav is reused, and files that fail to convert are skipped and counted. Without conversion the
    lists point at the mp3 files (soundfile decodes mp3 with libsndfile >= 1.1, but slowly).

    >>> import tempfile
    >>> prepare_zhvoice(tempfile.mkdtemp(), tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mvector.errors.DataListError: zhvoice infodata.json not found: .../text/infodata.json
    """
    root = require_dir(Path(root), "zhvoice root")
    info_path = Path(infodata) if infodata is not None else root / "text" / "infodata.json"
    if not info_path.is_file():
        raise DataListError(f"zhvoice infodata.json not found: {info_path}")
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, row in _read_infodata(info_path):
        full = os.path.abspath(os.path.join(root, str(row["index"])))
        if full in seen:
            continue
        seen.add(full)
        if not os.path.isfile(full):
            skipped.append((full, f"listed in {info_path.name}:{number} but not found"))
            continue
        found.append((full, str(row["speaker"])))
    if not found:
        raise DataListError(f"no audio found for the {len(skipped)} entries of {info_path}")
    if convert_wav:
        records = _convert_records(found, root, wav_dir, sample_rate, num_workers, skipped)
    else:
        records = filter_readable(found, check_audio, num_workers, skipped)
    return split_and_write(
        output_dir, records, skipped, notes, test_ratio, test_speakers, num_trials, seed, paths
    )


def _convert_records(
    found: list[tuple[str, str]],
    root: Path,
    wav_dir: PathLike | None,
    sample_rate: int,
    num_workers: int | None,
    skipped: list[tuple[str, str]],
) -> list[tuple[str, str]]:
    root_abs = os.path.abspath(root)

    def target(src: str) -> str:
        stem = os.path.splitext(src)[0] + ".wav"
        if wav_dir is None:
            return stem
        return os.path.join(os.path.abspath(wav_dir), os.path.relpath(stem, root_abs))

    def work(rec: tuple[str, str]) -> str | None:
        src = rec[0]
        dst = target(src)
        if os.path.exists(dst):
            try:
                info = sf.info(dst)
                if info.frames > 0 and info.samplerate == sample_rate and info.channels == 1:
                    return None  # converted by an earlier run
            except Exception:
                pass
        try:
            convert_to_wav(src, dst, sample_rate)
        except AudioError as err:
            return str(err)
        return None

    problems = parallel_map(work, found, num_workers)
    records = []
    for rec, problem in zip(found, problems):
        if problem is None:
            records.append((target(rec[0]), rec[1]))
        else:
            skipped.append((rec[0], problem))
    return records
