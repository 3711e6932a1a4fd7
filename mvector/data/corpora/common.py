"""The part of data-list preparation every corpus layout shares: what a preparation wrote (:class:`PreparedData`),
writing lists and trial files (paths relative to the list's folder where they resolve to the same file), the
speaker split and generated trials, audio checks and conversion, scanning a speaker tree, official trial files,
and the tail every ``prepare_*`` ends with (:func:`write_prepared`). The layouts themselves are the modules beside
this one; :mod:`mvector.data.corpora` describes the files written.

>>> sorted(PATH_MODES)
['absolute', 'inside', 'relative']
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import soundfile as sf

from mvector.data.trials import generate_trials
from mvector.errors import AudioError, ConfigError, DataListError
from mvector.utils.files import atomic_open
from mvector.utils.threads import usable_cpus

__all__ = [
    "PreparedData",
    "PATH_MODES",
    "DEFAULT_MAX_TRIALS",
    "write_list",
    "write_trials",
    "split_speakers",
    "sample_trial_pairs",
    "generate_trial_lines",
    "convert_to_wav",
    "check_audio_file",
    "readable_extensions",
    "output_folder",
    "parallel_map",
    "filter_readable",
    "require_dir",
    "scan_speaker_tree",
    "single_file_note",
    "write_prepared",
    "split_and_write",
    "as_roots",
    "read_fields",
    "numbered_lines",
    "trial_label",
    "official_evaluation",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Default cap on generated trials (the default count is ``min(2 * all target pairs, DEFAULT_MAX_TRIALS)``).
DEFAULT_MAX_TRIALS = 20000

# Containers libsndfile can decode (MP3 only with libsndfile >= 1.1, checked at run time).
_SNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".au", ".w64", ".rf64", ".caf"}
# Common audio containers soundfile cannot decode: found files are reported as skipped, not silently ignored.
_UNSUPPORTED_EXTENSIONS = {".m4a", ".aac", ".mp4", ".wma", ".amr", ".webm", ".3gp", ".ape", ".mka"}
CONVERT_HINT = "convert it to wav first, e.g. `ffmpeg -i in.m4a -ac 1 -ar 16000 out.wav`"


def readable_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) that the installed soundfile/libsndfile can decode.

    >>> ".wav" in readable_extensions() and ".flac" in readable_extensions()
    True
    """
    exts = set(_SNDFILE_EXTENSIONS)
    if "MP3" in sf.available_formats():
        exts.add(".mp3")
    return frozenset(exts)


@dataclass
class PreparedData:
    """What a ``prepare_*`` call wrote: the three file paths, counts, and any warnings.

    >>> d = PreparedData(Path("t.txt"), Path("v.txt"), Path("tr.txt"))
    >>> d.num_trials, d.skipped_list is None
    (0, True)
    """

    train_list: Path
    test_list: Path
    trials: Path
    skipped_list: Path | None = None
    num_train_speakers: int = 0
    num_test_speakers: int = 0
    num_train_utterances: int = 0
    num_test_utterances: int = 0
    num_trials: int = 0
    num_target_trials: int = 0
    num_skipped: int = 0
    official_trials: bool = False
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A short human-readable summary (what ``create_data.py`` prints).

        >>> print(PreparedData(Path("a"), Path("b"), Path("c"), num_train_speakers=3).summary().splitlines()[0])
        speakers:   train 3, test 0
        """
        kind = "official" if self.official_trials else "generated"
        lines = [
            f"speakers:   train {self.num_train_speakers}, test {self.num_test_speakers}",
            f"utterances: train {self.num_train_utterances}, test {self.num_test_utterances}",
            f"trials:     {self.num_trials} {kind} ({self.num_target_trials} target, "
            f"{self.num_trials - self.num_target_trials} non-target)",
            f"skipped:    {self.num_skipped}" + (f" (listed in {self.skipped_list})" if self.skipped_list else ""),
            f"wrote:      {self.train_list}, {self.test_list}, {self.trials}",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------


#: How ``create_data`` writes audio paths (see the module docstring).
PATH_MODES = ("inside", "relative", "absolute")


def _path_mode(paths: str) -> Union[bool, str]:
    if paths not in PATH_MODES:
        raise ConfigError(f"paths must be one of {', '.join(PATH_MODES)}, got {paths!r}")
    return {"inside": "inside", "relative": True, "absolute": False}[paths]


def output_folder(output_dir: PathLike, create: bool = True) -> Path:
    """``output_dir`` (created if missing); a path naming an existing file is a :class:`ConfigError`.

    >>> import tempfile
    >>> output_folder(Path(tempfile.mkdtemp()) / "lists").is_dir()
    True
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} exists and is not a folder; give a folder for the lists")
    if not create:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise ConfigError(f"output_dir {out}: cannot create the folder, a file is in the way ({err})") from None
    except OSError as err:
        raise ConfigError(f"output_dir {out}: cannot create the folder ({err.strerror or err})") from None
    return out


def _atomic_write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write lines to ``path`` atomically (see :mod:`mvector.utils.files`)."""
    with atomic_open(path, "w") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")


class _PathWriter:
    """Turns audio paths into the text written in a list stored in ``base``: relative when that is safe.

    A relative path is used only when both the physical resolution (what ``open`` does) and the lexical
    one (``os.path.normpath``, what mvector's readers do) of ``base/relative`` reach the same file; symlinked
    folders can make the two differ, and then the absolute path is written instead. Checked once per folder.
    """

    def __init__(self, base: PathLike, relative: Union[bool, str] = "inside"):
        self.base = os.path.abspath(os.fspath(base))
        self.real_base = os.path.realpath(self.base)
        self.relative = relative
        self._folder_ok: dict[str, bool] = {}

    def __call__(self, audio_path: PathLike) -> str:
        absolute = os.path.abspath(os.fspath(audio_path))
        if not self.relative:
            return absolute
        folder = os.path.dirname(absolute)
        try:
            if not os.path.isdir(folder) or not os.path.isdir(self.base):
                rel = os.path.relpath(absolute, self.base)  # nothing on disk to check: lexical rule
                return absolute if self._outside(rel) else self._not_comment(rel)
            rel = os.path.relpath(os.path.realpath(absolute), self.real_base)
        except ValueError:  # another drive on Windows
            return absolute
        if self._outside(rel):
            return absolute
        rel_folder = os.path.dirname(rel)
        ok = self._folder_ok.get(folder)
        if ok is None:
            ok = self._same_place(folder, rel_folder)
            self._folder_ok[folder] = ok
        return self._not_comment(rel) if ok else absolute

    def _outside(self, rel: str) -> bool:
        """With ``relative="inside"``, a path leaving the list's folder (``../``) is written absolute instead."""
        return self.relative == "inside" and (rel == os.pardir or rel.startswith(os.pardir + os.sep))

    @staticmethod
    def _not_comment(rel: str) -> str:
        """A relative path starting with ``#`` (a speaker folder ``#alice``) would be read as a comment line."""
        return os.curdir + os.sep + rel if rel.startswith("#") else rel

    def _same_place(self, folder: str, rel_folder: str) -> bool:
        physical = os.path.join(self.base, rel_folder) if rel_folder else self.base
        lexical = os.path.normpath(physical)
        try:
            return os.path.samefile(physical, folder) and os.path.samefile(lexical, folder)
        except OSError:
            return False


def _check_path_text(text: str, where: str) -> None:
    if any(ch in text for ch in "\t\n\r"):
        raise DataListError(f"{where}: path contains a tab or newline and cannot be written to a list: {text!r}")


def write_list(path: PathLike, items: Iterable[tuple[PathLike, int]], relative: Union[bool, str] = "inside") -> int:
    """Write ``path<TAB>label`` lines atomically; returns the number of lines.

    Audio paths are filesystem paths (absolute, or relative to the current folder). ``relative`` says how they
    are written: ``"inside"`` (default) relative to the list file's folder for audio inside that folder and
    absolute for audio outside it, so the list folder can be moved together with the audio inside it and a
    list pointing elsewhere keeps working when moved; ``True`` relative whenever possible (``../`` too);
    ``False`` always absolute. A relative path starting with ``#`` is written as ``./#...`` (not a comment).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> items = [(folder / "lists" / "a" / "x.wav", 0), (folder / "b" / "y.wav", 1)]
    >>> write_list(folder / "lists" / "train.txt", items)
    2
    >>> [line.replace(str(folder), "ROOT") for line in (folder / "lists" / "train.txt").read_text().splitlines()]
    ['a/x.wav\\t0', 'ROOT/b/y.wav\\t1']
    >>> _ = write_list(folder / "lists" / "rel.txt", items, relative=True)
    >>> (folder / "lists" / "rel.txt").read_text().splitlines()
    ['a/x.wav\\t0', '../b/y.wav\\t1']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = _PathWriter(path.parent, relative=relative)
    lines = []
    for audio, label in items:
        text = writer(audio)
        _check_path_text(text, str(path))
        lines.append(f"{text}\t{int(label)}")
    _atomic_write_lines(path, lines)
    return len(lines)


def write_trials(
    path: PathLike, trials: Iterable[tuple[int, PathLike, PathLike]], relative: Union[bool, str] = "inside"
) -> int:
    """Write ``label enroll test`` trial lines atomically (paths as in :func:`write_list`); returns the count.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_trials(folder / "trials.txt", [(1, folder / "a.wav", folder / "b.wav")])
    1
    >>> (folder / "trials.txt").read_text()
    '1 a.wav b.wav\\n'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = _PathWriter(path.parent, relative=relative)
    lines = []
    for label, enroll, test in trials:
        if int(label) not in (0, 1):
            raise DataListError(f"{path}: trial label must be 0 or 1, got {label!r}")
        a, b = writer(enroll), writer(test)
        for text in (a, b):
            _check_path_text(text, str(path))
            if " " in text:
                raise DataListError(f"{path}: trial paths are space-separated; this path contains a space: {text!r}")
        lines.append(f"{int(label)} {a} {b}")
    _atomic_write_lines(path, lines)
    return len(lines)


# ---------------------------------------------------------------------------------------------------------
# speaker split and trial generation
# ---------------------------------------------------------------------------------------------------------


def split_speakers(
    speakers: Iterable[str], test_ratio: float = 0.1, test_speakers: int | None = None, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split speaker names into (train, test), disjoint and deterministic for a given ``seed``; both sorted.

    ``test_speakers`` (an exact count, 0..K) wins over ``test_ratio``. With a ratio the test set gets
    ``round(ratio * K)`` speakers, but at least 2 (so non-target trials exist) and at least one speaker
    stays for training; a ratio of 0 gives no test speakers.

    >>> train, test = split_speakers(["a", "b", "c", "d", "e"], test_speakers=2, seed=3)
    >>> len(train), len(test), sorted(train + test)
    (3, 2, ['a', 'b', 'c', 'd', 'e'])
    >>> split_speakers(["a", "b", "c"], test_ratio=0.1)[1].__len__()
    2
    """
    names = sorted(set(speakers))
    k = len(names)
    if test_speakers is not None:
        if isinstance(test_speakers, bool) or int(test_speakers) != test_speakers or not 0 <= test_speakers <= k:
            raise ConfigError(
                f"test_speakers must be an integer between 0 and {k} (the speaker count), got {test_speakers!r}"
            )
        n_test = int(test_speakers)
    else:
        if not 0.0 <= float(test_ratio) < 1.0:
            raise ConfigError(f"test_ratio must be in [0, 1), got {test_ratio!r}")
        if test_ratio == 0 or k < 2:
            n_test = 0
        else:
            n_test = min(max(int(round(test_ratio * k)), 2), k - 1)
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(k)[:n_test].tolist())
    train = [n for i, n in enumerate(names) if i not in chosen]
    test = [n for i, n in enumerate(names) if i in chosen]
    return train, test


def sample_trial_pairs(
    labels: Sequence[int], num_trials: int | None = None, seed: int = 0
) -> list[tuple[int, int, int]]:
    """Balanced distinct utterance pairs ``(target, i, j)`` with ``i < j`` for a trial list.

    ``num_trials // 2`` target (same label) pairs and the rest non-target, drawn without replacement by
    :func:`mvector.data.trials.generate_trials` with ``balanced=True``: when either kind runs out the other is
    capped to match. The default count is ``min(2 * number of target pairs, 20000)``. Deterministic for a given
    ``seed``; sorted by ``(i, j)``.

    >>> pairs = sample_trial_pairs([0, 0, 1, 1], seed=0)
    >>> [p for p in pairs if p[0] == 1], len(pairs)
    ([(1, 0, 1), (1, 2, 3)], 4)
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if num_trials is None:
        _, counts = np.unique(labels, return_counts=True)
        num_trials = min(2 * int((counts * (counts - 1) // 2).sum()), DEFAULT_MAX_TRIALS)
    if isinstance(num_trials, bool) or int(num_trials) != num_trials or num_trials < 0:
        raise ConfigError(f"num_trials must be a non-negative integer, got {num_trials!r}")
    if int(num_trials) == 0 or labels.size < 2:
        return []
    return generate_trials(labels, int(num_trials), seed=seed, balanced=True)


def generate_trial_lines(
    paths: Sequence[str], labels: Sequence[int], num_trials: int | None = None, seed: int = 0
) -> list[str]:
    """``label enroll test`` lines for a labelled test list (see :func:`sample_trial_pairs` for the sampling).

    >>> sorted(generate_trial_lines(["a.wav", "b.wav", "c.wav", "d.wav"], [0, 0, 1, 1]))[-2:]
    ['1 a.wav b.wav', '1 c.wav d.wav']
    """
    if len(paths) != len(labels):
        raise DataListError(f"generate_trial_lines: {len(paths)} paths but {len(labels)} labels")
    return [f"{t} {paths[i]} {paths[j]}" for t, i, j in sample_trial_pairs(labels, num_trials, seed)]


# ---------------------------------------------------------------------------------------------------------
# audio checks and conversion
# ---------------------------------------------------------------------------------------------------------


def check_audio_file(path: PathLike, full: bool = False) -> str | None:
    """Why ``path`` is unusable, or None when it is fine. Header only by default; ``full`` decodes it all.

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "bad.wav"
    >>> _ = bad.write_bytes(b"RIFF....WAVE")
    >>> check_audio_file(bad) is not None
    True
    """
    path = os.fspath(path)
    try:
        if not full:
            info = sf.info(path)
            if info.frames <= 0:
                return "empty audio (0 frames)"
            if info.samplerate <= 0:
                return "invalid sample rate in header"
            return None
        data, _ = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile reports any damage as a generic error
        return f"unreadable: {str(err).strip() or type(err).__name__}"
    if data.size == 0:
        return "empty audio (0 samples)"
    if not np.isfinite(data).all():
        return "non-finite samples (NaN or Inf)"
    return None


def convert_to_wav(src: PathLike, dst: PathLike, sample_rate: int = 16000) -> None:
    """Decode ``src`` (any format soundfile reads, e.g. mp3), mix to mono, resample, write 16-bit PCM ``dst``.

    Written atomically (temporary file, then rename); raises :class:`~mvector.errors.AudioError` naming the file.

    >>> import tempfile, soundfile as sf, numpy as np
    >>> folder = Path(tempfile.mkdtemp())
    >>> sf.write(str(folder / "a.flac"), np.zeros((800, 2), "float32"), 8000)
    >>> convert_to_wav(folder / "a.flac", folder / "a.wav")
    >>> sf.info(str(folder / "a.wav")).samplerate, sf.info(str(folder / "a.wav")).frames
    (16000, 1600)
    """
    src, dst = os.fspath(src), os.fspath(dst)
    try:
        data, rate = sf.read(src, dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(f"{src}: cannot decode ({str(err).strip() or type(err).__name__})") from err
    if data.size == 0:
        raise AudioError(f"{src}: empty audio")
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError(f"{src}: non-finite samples")
    if rate != sample_rate:
        import soxr

        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    try:  # atomic, with the permissions the umask gives a new file
        with atomic_open(dst, "wb") as fh:
            sf.write(fh, np.clip(mono, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    except Exception as err:
        raise AudioError(f"{dst}: cannot write converted audio ({err})") from err


def parallel_map(func: Callable, items: Sequence, num_workers: int | None) -> list:
    """Map in threads (libsndfile and soxr release the GIL); serial for small inputs or one worker.

    >>> parallel_map(abs, [-1, 2, -3], num_workers=2)
    [1, 2, 3]
    """
    workers = num_workers if num_workers is not None else min(8, usable_cpus())
    if workers <= 1 or len(items) < 2 * workers:
        return [func(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(func, items))


def filter_readable(
    records: list[tuple[str, str]], check_audio: bool, num_workers: int | None, skipped: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The ``(path, speaker)`` records whose audio reads (header only, or every sample with ``check_audio``); the
    others go to ``skipped`` with the reason.

    >>> skipped = []
    >>> filter_readable([("/no/such.wav", "a")], False, 1, skipped), skipped[0][0]
    ([], '/no/such.wav')
    """
    problems = parallel_map(lambda rec: check_audio_file(rec[0], full=check_audio), records, num_workers)
    good = []
    for rec, problem in zip(records, problems):
        if problem is None:
            good.append(rec)
        else:
            skipped.append((rec[0], problem))
    return good


# ---------------------------------------------------------------------------------------------------------
# scanning and the shared tail of every corpus
# ---------------------------------------------------------------------------------------------------------


def require_dir(path: Path, what: str) -> Path:
    """``path`` when it is a folder, else a :class:`DataListError` naming ``what``.

    >>> require_dir(Path("/no/such"), "audio root")
    Traceback (most recent call last):
    ...
    mvector.errors.DataListError: audio root not found: /no/such
    """
    if not path.exists():
        raise DataListError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DataListError(f"{what} is not a folder: {path}")
    return path


def scan_speaker_tree(
    root: Path, skipped: list[tuple[str, str]], notes: list[str], exclude: Sequence[Path] = ()
) -> list[tuple[str, str]]:
    """``root/<speaker>/**/<audio>`` -> (absolute path, speaker) records, sorted; files no list can hold or no
    decoder reads go to ``skipped``, loose files to ``notes``. Example: :func:`split_and_write` and the package's.
    """
    readable = readable_extensions()
    excluded = {os.path.realpath(p) for p in exclude}
    records: list[tuple[str, str]] = []
    loose = 0
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            loose += os.path.splitext(entry.name)[1].lower() in readable
            continue
        if os.path.realpath(entry.path) in excluded:
            continue
        for folder, dirs, files in os.walk(entry.path, followlinks=True):
            dirs[:] = sorted(
                d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) not in excluded
            )
            for name in sorted(files):
                if name.startswith("."):
                    continue
                ext = os.path.splitext(name)[1].lower()
                full = os.path.abspath(os.path.join(folder, name))
                if any(ch in full for ch in "\t\n\r"):
                    skipped.append((repr(full), "path contains a tab or newline, which a list line cannot hold"))
                elif ext in readable:
                    records.append((full, entry.name))
                elif ext in _UNSUPPORTED_EXTENSIONS or ext == ".mp3":
                    skipped.append((full, f"{ext} is not readable by soundfile; {CONVERT_HINT}"))
    if loose:
        notes.append(f"{loose} audio file(s) directly in {root} have no speaker folder and were ignored")
    return records


def _labels_for(records: list[tuple[str, str]]) -> list[tuple[str, int]]:
    names = sorted({spk for _, spk in records})
    index = {name: i for i, name in enumerate(names)}
    return [(path, index[spk]) for path, spk in sorted(records, key=lambda r: (r[1], r[0]))]


def single_file_note(records: list[tuple[str, str]], where: str) -> str | None:
    """A warning naming the speakers with one file (no target trial can use them), or None.

    >>> single_file_note([("a.wav", "ann"), ("b.wav", "bob"), ("c.wav", "bob")], "test")
    '1 test speaker(s) have a single file, so no target trial can use them: ann'
    """
    counts: dict[str, int] = {}
    for _, spk in records:
        counts[spk] = counts.get(spk, 0) + 1
    lonely = sorted(s for s, c in counts.items() if c == 1)
    if not lonely:
        return None
    shown = ", ".join(lonely[:5]) + (f" and {len(lonely) - 5} more" if len(lonely) > 5 else "")
    return f"{len(lonely)} {where} speaker(s) have a single file, so no target trial can use them: {shown}"


def write_prepared(
    output_dir: PathLike,
    train: list[tuple[str, str]],
    test: list[tuple[str, str]],
    skipped: list[tuple[str, str]],
    notes: list[str],
    num_trials: int | None,
    seed: int,
    official_trials: list[tuple[int, str, str]] | None = None,
    paths: str = "inside",
) -> PreparedData:
    """Write ``train_list.txt``, ``test_list.txt``, ``trials.txt`` (the ``official_trials``, subsampled to
    ``num_trials``, or pairs drawn from the test records) and ``skipped.txt`` into ``output_dir``; every note is
    also a warning. Example: :func:`split_and_write`."""
    out = output_folder(output_dir)
    relative = _path_mode(paths)
    if not train and not test:
        raise DataListError("no usable audio found" + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    train_items, test_items = _labels_for(train), _labels_for(test)
    result = PreparedData(out / "train_list.txt", out / "test_list.txt", out / "trials.txt")
    result.num_train_utterances = write_list(result.train_list, train_items, relative=relative)
    result.num_test_utterances = write_list(result.test_list, test_items, relative=relative)
    result.num_train_speakers = len({spk for _, spk in train})
    result.num_test_speakers = len({spk for _, spk in test})

    if official_trials is not None:
        trials = official_trials
        if num_trials is not None and num_trials < len(trials):
            rng = np.random.default_rng(seed)
            trials = [trials[i] for i in np.sort(rng.choice(len(trials), size=int(num_trials), replace=False))]
        result.official_trials = True
    else:
        note = single_file_note(test, "test")
        if note:
            notes.append(note)
        paths = [p for p, _ in test_items]
        as_written = _PathWriter(out, relative=relative)
        usable = [k for k, p in enumerate(paths) if " " not in as_written(p)]
        if len(usable) < len(paths):
            notes.append(
                f"{len(paths) - len(usable)} test file(s) have a space in their path and are left out of trials"
            )
        labels = [test_items[k][1] for k in usable]
        trials = [(t, paths[usable[i]], paths[usable[j]]) for t, i, j in sample_trial_pairs(labels, num_trials, seed)]
        if result.num_test_speakers == 1:
            notes.append("only one test speaker: no non-target trials can be formed, so no trials were written")
    result.num_trials = write_trials(result.trials, trials, relative=relative)
    result.num_target_trials = sum(1 for t, _, _ in trials if t == 1)
    if result.num_test_speakers == 0:
        notes.append("no test speakers: test_list.txt and trials.txt are empty")
    if not train:
        notes.append("no training speakers: train_list.txt is empty")

    skipped_path = out / "skipped.txt"
    result.num_skipped = len(skipped)
    if skipped:
        _atomic_write_lines(skipped_path, [f"{p}\t{reason}" for p, reason in sorted(skipped)])
        result.skipped_list = skipped_path
        notes.append(f"{len(skipped)} file(s) skipped, listed in {skipped_path}")
    elif skipped_path.exists():
        skipped_path.unlink()  # stale list from an earlier run
    result.warnings = list(notes)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return result


def split_and_write(
    output_dir: PathLike,
    records: list[tuple[str, str]],
    skipped: list[tuple[str, str]],
    notes: list[str],
    test_ratio: float,
    test_speakers: int | None,
    num_trials: int | None,
    seed: int,
    paths: str,
) -> PreparedData:
    """Split ``(path, speaker)`` records into speaker-disjoint training and test sets (:func:`split_speakers`) and
    write the lists with trials generated from the test set (:func:`write_prepared`): what every corpus without
    official trials ends with.

    >>> import tempfile, numpy as np, soundfile as sf
    >>> root = Path(tempfile.mkdtemp())
    >>> for k in range(6):
    ...     sf.write(str(root / f"{k}.wav"), np.zeros(800, "float32"), 16000)
    >>> records = [(str(root / f"{k}.wav"), f"spk{k % 3}") for k in range(6)]
    >>> split_and_write(root / "lists", records, [], [], 0.1, 2, None, 0, "inside").num_test_speakers
    2
    """
    train_spk, test_spk = split_speakers({s for _, s in records}, test_ratio, test_speakers, seed)
    test_set = set(test_spk)
    train = [r for r in records if r[1] not in test_set]
    test = [r for r in records if r[1] in test_set]
    return write_prepared(output_dir, train, test, skipped, notes, num_trials, seed, paths=paths)


def as_roots(root: PathLike | Sequence[PathLike]) -> list[Path]:
    """One corpus root or several, as a non-empty list of paths.

    >>> as_roots("vox1"), as_roots(["vox1", "vox2"])
    ([PosixPath('vox1')], [PosixPath('vox1'), PosixPath('vox2')])
    """
    if isinstance(root, (str, os.PathLike)):
        return [Path(root)]
    roots = [Path(r) for r in root]
    if not roots:
        raise ConfigError("at least one corpus root is needed")
    return roots


def read_fields(path: Path, count: int) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of each non-empty line with exactly ``count`` whitespace-separated fields; another
    count is a :class:`DataListError` naming the line.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "trials.txt"
    >>> _ = p.write_text("1 a.wav b.wav\\n\\n0 a.wav c.wav\\n")
    >>> read_fields(p, 3)
    [(1, ['1', 'a.wav', 'b.wav']), (3, ['0', 'a.wav', 'c.wav'])]
    """
    rows = []
    for number, line in numbered_lines(path):
        parts = line.split()
        if len(parts) != count:
            raise DataListError(f"{path}:{number}: expected {count} fields, got {len(parts)}: {line!r}")
        rows.append((number, parts))
    return rows


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` of each non-blank line of a UTF-8 text file.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "list.txt"
    >>> _ = p.write_text(" a \\n\\n b\\n")
    >>> list(numbered_lines(p))
    [(1, 'a'), (3, 'b')]
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if line:
                yield number, line


def trial_label(text: str, where: str) -> int:
    """1 for ``1`` / ``target``, 0 for ``0`` / ``nontarget``; anything else is a :class:`DataListError` at ``where``.

    >>> trial_label("target", "trials.lst:3"), trial_label("0", "trials.lst:4")
    (1, 0)
    """
    lowered = text.lower()
    if lowered in ("1", "target"):
        return 1
    if lowered in ("0", "nontarget", "non-target"):
        return 0
    raise DataListError(f"{where}: trial label must be 0/1 (or target/nontarget), got {text!r}")


def official_evaluation(
    pairs: list[tuple[int, str, str, str, str]],
    check_audio: bool,
    num_workers: int | None,
    skipped: list[tuple[str, str]],
) -> tuple[list[tuple[str, str]], list[tuple[int, str, str]], int]:
    """From resolved trials (label, enroll path, enroll speaker, test path, test speaker): the test records, the
    trials whose files read, and how many were dropped.

    >>> official_evaluation([(1, "/no/a.wav", "a", "/no/b.wav", "a")], False, 1, [])
    ([], [], 1)
    """
    speaker_of: dict[str, str] = {}
    for _, ep, es, tp, ts in pairs:
        speaker_of.setdefault(ep, es)
        speaker_of.setdefault(tp, ts)
    records = sorted(speaker_of.items())
    good = {p for p, _ in filter_readable(records, check_audio, num_workers, skipped)}
    trials = [(label, ep, tp) for label, ep, _, tp, _ in pairs if ep in good and tp in good]
    test = [r for r in records if r[0] in good]
    return test, trials, len(pairs) - len(trials)
