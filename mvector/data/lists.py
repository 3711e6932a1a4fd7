"""Reading and validating data lists: ``path<TAB>label`` files and Kaldi-style folders.

Every problem of a list is found before training starts and reported together in ONE
:class:`~mvector.errors.DataListError` that names the list file and the line numbers.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a.wav").write_bytes(b""), (folder / "b.wav").write_bytes(b"")
>>> _ = (folder / "list.txt").write_text("# path<TAB>label\\na.wav\\t0\\nb.wav\\t1\\n")
>>> utts = read_list(folder / "list.txt")
>>> [(pathlib.Path(u.path).name, u.label, u.line) for u in utts]
[('a.wav', 0, 2), ('b.wav', 1, 3)]
>>> infer_num_speakers(utts)
2
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

from mvector.errors import DataListError

__all__ = [
    "Utterance",
    "read_list",
    "read_kaldi_dir",
    "load_utterances",
    "infer_num_speakers",
    "check_num_speakers",
    "MAX_REPORTED_PROBLEMS",
]

PathLike = Union[str, os.PathLike]

#: How many problems a :class:`DataListError` spells out; the rest are counted.
MAX_REPORTED_PROBLEMS = 10


@dataclass(frozen=True)
class Utterance:
    """One entry of a data list: an absolute audio path, an integer speaker label and its 1-based line.

    ``line`` is 0 when the utterance did not come from a file.

    >>> Utterance("/data/a.wav", 3, 7)
    Utterance(path='/data/a.wav', label=3, line=7)
    """

    path: str
    label: int
    line: int = 0


class _Problems:
    """Collects problems of one list so that they are all reported in one error."""

    def __init__(self, source: str):
        self.source = source
        self.items: list[tuple[tuple[int, int], str]] = []

    def add(self, message: str, order: tuple[int, int] = (0, 0)) -> None:
        """Record a problem; ``order`` (file index, line) sorts the report into file order."""
        self.items.append((order, message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        count = len(self.items)
        ordered = [message for _, message in sorted(self.items, key=lambda item: item[0])]
        if count == 1:  # one problem: one line naming the file and the line
            raise DataListError(f"{self.source}: {ordered[0]}")
        shown = ordered[:MAX_REPORTED_PROBLEMS]
        lines = [f"{self.source}: {count} problem{'s' if count > 1 else ''} in the data list:"]
        lines += [f"  {item}" for item in shown]
        if count > len(shown):
            lines.append(f"  ... and {count - len(shown)} more")
        raise DataListError("\n".join(lines))


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.exists():
        raise DataListError(f"{path}: {what} not found")
    if path.is_dir():
        raise DataListError(f"{path}: {what} is a folder, expected a text file")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DataListError(f"{path}: {what} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise DataListError(f"{path}: cannot read {what}: {err}") from err


def _path_problem(raw: str) -> str | None:
    """Why ``raw`` cannot name a file (a NUL byte: no operating system allows one), or None."""
    if "\x00" in raw:
        return f"the path {raw.replace(chr(0), '<NUL>')[:80]!r} holds a NUL byte (a binary file, or a damaged line?)"
    return None


def _resolve(raw: str, base: Path) -> str:
    expanded = os.path.expanduser(raw)
    if os.path.isabs(expanded):
        return os.path.normpath(expanded)
    return os.path.normpath(os.path.join(base, expanded))


def _split_list_line(text: str) -> tuple[str, str] | None:
    """``(path, label)`` of a list line, or None when it has no label field."""
    if "\t" in text:
        path, _, label = text.rpartition("\t")
    else:
        fields = text.rsplit(None, 1)
        if len(fields) != 2:
            return None
        path, label = fields
    path, label = path.strip(), label.strip()
    if not path or not label:
        return None
    return path, label


def _parse_label(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _validate(
    entries: Sequence[tuple[int, str, int | None, str]],
    problems: _Problems,
    num_speakers: int | None,
    check_files: bool,
    where: str = "line",
) -> list[Utterance]:
    """Shared checks. ``entries`` are ``(line, absolute path, label or None, raw label text)``."""
    seen: dict[str, int] = {}
    out: list[Utterance] = []
    for line, path, label, raw_label in entries:
        bad = False
        if label is None:
            problems.add(f"{where} {line}: label {raw_label!r} is not an integer", (0, line))
            bad = True
        elif label < 0:
            problems.add(f"{where} {line}: label {label} is negative", (0, line))
            bad = True
        elif num_speakers and label >= num_speakers:
            problems.add(
                f"{where} {line}: label {label} is outside 0..{num_speakers - 1} (num_speakers={num_speakers})",
                (0, line),
            )
            bad = True
        if path in seen:
            problems.add(f"{where} {line}: {path} is listed twice (first on {where} {seen[path]})", (0, line))
            bad = True
        else:
            seen[path] = line
            if check_files and not os.path.isfile(path):
                problems.add(f"{where} {line}: audio file not found: {path}", (0, line))
                bad = True
        if not bad:
            out.append(Utterance(path, int(label), line))
    return out


def read_list(path: PathLike, num_speakers: int | None = None, check_files: bool = True) -> list[Utterance]:
    """Read and validate a ``path<TAB>label`` list.

    Paths are relative to the folder of the list file unless absolute (``~`` is expanded). Blank lines and
    lines starting with ``#`` are skipped. Without a tab, fields are split on whitespace: the label is the last
    field and everything before it is the path, so paths may contain spaces. Problems (malformed lines,
    non-integer or negative labels, labels outside ``0..num_speakers-1`` when ``num_speakers`` is given,
    the same path twice, missing audio files when ``check_files``, an empty list) are all collected into one
    :class:`DataListError` naming the list file and line numbers.

    >>> import tempfile, pathlib
    >>> lst = pathlib.Path(tempfile.mkdtemp()) / "list.txt"
    >>> _ = lst.write_text("a.wav\\t0\\nb.wav\\tx\\na.wav\\t1\\n")
    >>> read_list(lst, check_files=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mvector.errors.DataListError: ...list.txt: 2 problems in the data list:
      line 2: label 'x' is not an integer
      line 3: ... is listed twice (first on line 1)
    """
    list_path = Path(path).expanduser().absolute()
    lines = _read_lines(list_path, "data list")
    base = list_path.parent
    problems = _Problems(str(list_path))
    entries: list[tuple[int, str, int | None, str]] = []
    for number, text in enumerate(lines, 1):
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = _split_list_line(stripped)
        if fields is None:
            problems.add(f"line {number}: expected 'path<TAB>label', got {stripped[:80]!r}", (0, number))
            continue
        raw_path, raw_label = fields
        bad = _path_problem(raw_path)
        if bad:
            problems.add(f"line {number}: {bad}", (0, number))
            continue
        entries.append((number, _resolve(raw_path, base), _parse_label(raw_label), raw_label))
    utts = _validate(entries, problems, num_speakers, check_files)
    if not entries and not problems.items:
        problems.add("the list holds no utterances (only blank or comment lines)")
    problems.raise_if_any()
    return utts


def _read_kaldi_table(path: Path, problems: _Problems, what: str, file_index: int) -> list[tuple[int, str, str]]:
    """``(line, key, value)`` rows of a Kaldi ``key value`` file; the value is the rest of the line."""
    rows = []
    for number, text in enumerate(_read_lines(path, what), 1):
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 1)
        if len(fields) != 2:
            problems.add(
                f"{path.name} line {number}: expected '<utterance-id> <{what}>', got {stripped[:80]!r}",
                (file_index, number),
            )
            continue
        rows.append((number, fields[0], fields[1].strip()))
    return rows


def read_kaldi_dir(
    directory: PathLike, num_speakers: int | None = None, check_files: bool = True
) -> tuple[list[Utterance], list[str]]:
    """Read a Kaldi-style data folder holding ``wav.scp`` (``utt_id path``) and ``utt2spk`` (``utt_id spk``).

    Returns the utterances in ``wav.scp`` order and the sorted speaker names; an utterance's label is the
    index of its speaker in that list. Relative paths are relative to the folder itself. Piped commands
    (``... |``) are rejected: convert the audio to files first. Problems (unknown or duplicate ids, a missing
    speaker, missing files, too many speakers for ``num_speakers``) are reported together, naming the file and
    line (``Utterance.line`` is the ``wav.scp`` line).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "wav.scp").write_text("u1 /x/1.wav\\nu2 /x/2.wav\\nu3 /x/3.wav\\n")
    >>> _ = (d / "utt2spk").write_text("u1 bob\\nu2 alice\\nu3 bob\\n")
    >>> utts, speakers = read_kaldi_dir(d, check_files=False)
    >>> speakers, [u.label for u in utts]
    (['alice', 'bob'], [1, 0, 1])
    """
    folder = Path(directory).expanduser().absolute()
    if not folder.is_dir():
        raise DataListError(f"{folder}: Kaldi data folder not found")
    scp_path, spk_path = folder / "wav.scp", folder / "utt2spk"
    for needed in (scp_path, spk_path):
        if not needed.is_file():
            raise DataListError(f"{needed}: missing; a Kaldi data folder needs wav.scp and utt2spk")
    problems = _Problems(str(folder))
    wav_rows = _read_kaldi_table(scp_path, problems, "path", 0)
    spk_rows = _read_kaldi_table(spk_path, problems, "speaker", 1)

    utt2spk: dict[str, str] = {}
    for number, utt, spk in spk_rows:
        if utt in utt2spk:
            problems.add(f"utt2spk line {number}: utterance id {utt!r} appears twice", (1, number))
            continue
        if len(spk.split()) != 1:
            problems.add(f"utt2spk line {number}: speaker {spk!r} contains spaces", (1, number))
            continue
        utt2spk[utt] = spk
    speakers = sorted(set(utt2spk.values()))
    index = {spk: i for i, spk in enumerate(speakers)}

    entries: list[tuple[int, str, int | None, str]] = []
    wav_ids: set[str] = set()
    for number, utt, value in wav_rows:
        if utt in wav_ids:
            problems.add(f"wav.scp line {number}: utterance id {utt!r} appears twice", (0, number))
            continue
        wav_ids.add(utt)
        if value.endswith("|"):
            problems.add(
                f"wav.scp line {number}: piped command {value[:60]!r} is not supported; "
                "write the audio to files and list their paths",
                (0, number),
            )
            continue
        if utt not in utt2spk:
            problems.add(f"wav.scp line {number}: utterance {utt!r} has no speaker in utt2spk", (0, number))
            continue
        bad = _path_problem(value)
        if bad:
            problems.add(f"wav.scp line {number}: {bad}", (0, number))
            continue
        label = index[utt2spk[utt]]
        entries.append((number, _resolve(value, folder), label, str(label)))
    for number, utt, _ in spk_rows:
        if utt in utt2spk and utt not in wav_ids:
            problems.add(f"utt2spk line {number}: utterance {utt!r} is not in wav.scp", (1, number))
    if num_speakers and len(speakers) > num_speakers:
        problems.add(f"{len(speakers)} speakers in utt2spk but num_speakers is {num_speakers}", (-1, 0))
        num_speakers = None  # reported once above, not once per line
    utts = _validate(entries, problems, num_speakers, check_files, where="wav.scp line")
    if not wav_rows and not problems.items:
        problems.add("wav.scp holds no utterances")
    problems.raise_if_any()
    return utts, speakers


def load_utterances(path: PathLike, num_speakers: int | None = None, check_files: bool = True) -> list[Utterance]:
    """Utterances of a list file (:func:`read_list`) or a Kaldi folder (:func:`read_kaldi_dir`).

    >>> import tempfile, pathlib
    >>> lst = pathlib.Path(tempfile.mkdtemp()) / "train.txt"
    >>> _ = lst.write_text("/data/a.wav\\t1\\n")
    >>> load_utterances(lst, check_files=False)
    [Utterance(path='/data/a.wav', label=1, line=1)]
    """
    target = Path(path).expanduser()
    if target.is_dir():
        return read_kaldi_dir(target, num_speakers, check_files)[0]
    if not target.exists():
        raise DataListError(f"{target}: data list not found (expected a path<TAB>label file or a Kaldi folder)")
    return read_list(target, num_speakers, check_files)


#: A largest label above this many times the number of distinct labels (and above 1000) is refused as a typo.
MAX_LABEL_GAP_FACTOR = 10


def infer_num_speakers(utts: Iterable[Utterance]) -> int:
    """Number of classes a list needs: the largest label + 1.

    A largest label far above the number of distinct labels (more than ``MAX_LABEL_GAP_FACTOR`` times it, and
    above 1000) is taken for a typo and is a :class:`DataListError` naming its line, instead of a classifier
    of that many rows (a label of 100000000 would allocate tens of GB).

    >>> infer_num_speakers([Utterance("/a.wav", 0), Utterance("/b.wav", 4)])
    5
    >>> infer_num_speakers([Utterance("/a.wav", 0, 1), Utterance("/b.wav", 100000000, 2)])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mvector.errors.DataListError: label 100000000 on line 2 is far above the 2 distinct labels of the list ...
    """
    utts = list(utts)
    if not utts:
        raise DataListError("cannot infer num_speakers from an empty list")
    worst = max(utts, key=lambda u: u.label)
    distinct = len({u.label for u in utts})
    limit = max(MAX_LABEL_GAP_FACTOR * distinct, MAX_LABEL_GAP_FACTOR * 100)
    if worst.label + 1 > limit:
        raise DataListError(
            f"label {worst.label} on line {worst.line} is far above the {distinct} distinct labels of the list "
            f"(it would need {worst.label + 1} classifier rows); labels should be 0..{distinct - 1}: fix the label "
            "(a typo?), or set dataset_conf.num_speakers explicitly if the gap is meant"
        )
    return worst.label + 1


def check_num_speakers(utts: Sequence[Utterance], configured: int) -> list[int]:
    """Check a configured ``num_speakers`` against the labels; returns the unused labels.

    A ``configured`` value smaller than the largest label + 1 is a :class:`DataListError` naming the first
    offending line. Gaps (labels in ``0..configured-1`` that no utterance uses) are allowed: the classifier
    simply has unused rows, which is harmless. They are returned and a warning is issued, because a gap
    usually means the list and the config disagree.

    >>> check_num_speakers([Utterance("/a.wav", 0), Utterance("/b.wav", 1)], 2)
    []
    >>> check_num_speakers([Utterance("/a.wav", 0, 1), Utterance("/b.wav", 5, 2)], 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mvector.errors.DataListError: num_speakers is 3 but the list has label 5 (line 2); labels must be 0..2: ...
    """
    if configured is None or int(configured) < 1:
        raise DataListError(f"num_speakers must be a positive integer, got {configured!r}")
    configured = int(configured)
    if not utts:
        raise DataListError("the data list is empty")
    worst = max(utts, key=lambda u: u.label)
    if worst.label >= configured:
        raise DataListError(
            f"num_speakers is {configured} but the list has label {worst.label} (line {worst.line}); "
            f"labels must be 0..{configured - 1}: raise dataset_conf.num_speakers to at least {worst.label + 1} "
            "or leave it unset to take it from the list"
        )
    used = {u.label for u in utts}
    limit = max(MAX_LABEL_GAP_FACTOR * len(used), MAX_LABEL_GAP_FACTOR * 100)
    if configured > limit:
        raise DataListError(
            f"num_speakers is {configured}, far above the {len(used)} speakers of the list (a classifier of "
            f"{configured} rows); set dataset_conf.num_speakers to about {worst.label + 1}, or leave it unset"
        )
    unused = [label for label in range(configured) if label not in used]
    if unused:
        shown = ", ".join(str(x) for x in unused[:10]) + (" ..." if len(unused) > 10 else "")
        warnings.warn(
            f"num_speakers is {configured} but {len(unused)} labels have no utterance ({shown}); "
            "their classifier rows stay unused",
            stacklevel=2,
        )
    return unused
