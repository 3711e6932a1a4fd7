"""Multi-speaker conversations with known turns, for testing and measuring diarization.

A conversation is a sequence of turns: each turn one speaker, a length drawn from ``[min_turn, max_turn]``
seconds, separated by pauses from ``[min_pause, max_pause]``, and with probability ``overlap`` starting before
the previous turn has ended (by up to ``max_overlap`` seconds). Every one of the ``num_speakers`` speakers
talks (the first turns visit them all in a random order), a speaker never follows itself, and turns go on until
``duration`` seconds are filled. Each speaker gets its own loudness; a low background noise runs throughout.

Voices come from a *source*:

* :class:`SyntheticSource`: the source-filter voices of :mod:`mvector.data.synthetic` (nothing to download);
* :class:`ListSource`: any speaker-labelled list (``path<TAB>label``, or a Kaldi folder): a turn is made of
  random recordings of the speaker, silence trimmed, joined with short gaps and cut to the turn length.

The reference turns run from the first to the last sample of each turn's speech (short gaps inside a turn count
as speech, as a human annotator would mark them). :func:`write_conversation` writes ``NAME.wav`` and
``NAME.rttm``; it mixes turn by turn into a short rolling buffer, so an hour-long conversation is written in
bounded memory. The same arguments give the same audio and turns.

>>> conv = generate_conversation(num_speakers=2, duration=6.0, seed=0, sample_rate=8000, min_turn=1.0, max_turn=2.0)
>>> conv.samples.dtype, sorted({t.speaker for t in conv.turns}), conv.turns[0].start > 0
(dtype('float32'), ['spk000', 'spk001'], True)
>>> conv.duration >= 6.0
True
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence, Union

import numpy as np

from mvector.audio import load_audio, normalize_db, vad_trim
from mvector.data.rttm import Segment, format_rttm
from mvector.data.synthetic import Voice, make_voices, synthesize_utterance
from mvector.errors import ConfigError, DataListError
from mvector.utils.files import atomic_write_text

__all__ = [
    "Conversation",
    "TurnPlan",
    "VoiceSource",
    "SyntheticSource",
    "ListSource",
    "plan_turns",
    "generate_conversation",
    "write_conversation",
    "generate_conversations",
    "overlap_regions",
]

PathLike = Union[str, os.PathLike]

_MAX_SAMPLE = np.float32(32767 / 32768)  # the largest 16-bit PCM sample


class VoiceSource(Protocol):
    """Where the speech of a conversation comes from: speaker names and speech of a given length."""

    sample_rate: int

    def speakers(self) -> list[str]:
        """Names of the available speakers."""
        ...

    def speech(self, speaker: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
        """About ``seconds`` of ``speaker``'s speech (float32, no leading or trailing silence)."""
        ...


class SyntheticSource:
    """Synthetic voices (:func:`mvector.data.synthetic.make_voices`), or the given :class:`Voice` objects.

    >>> src = SyntheticSource(3, seed=1, sample_rate=8000)
    >>> src.speakers(), len(src.speech("spk001", 0.5, np.random.default_rng(0))) <= 4000
    (['spk000', 'spk001', 'spk002'], True)
    """

    def __init__(
        self, voices: int | Sequence[Voice] = 10, seed: int = 0, sample_rate: int = 16000, trim_db: float = 30.0
    ) -> None:
        self.voices = make_voices(voices, seed=seed) if isinstance(voices, int) else list(voices)
        if not self.voices or not all(isinstance(v, Voice) for v in self.voices):
            raise ConfigError("SyntheticSource needs a positive number of voices or a list of Voice objects")
        self._by_name = {v.name: v for v in self.voices}
        self.sample_rate = int(sample_rate)
        self.trim_db = float(trim_db)

    def speakers(self) -> list[str]:
        """The voices' names."""
        return [v.name for v in self.voices]

    def speech(self, speaker: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
        """``seconds`` of the voice, its leading and trailing pauses trimmed."""
        wave = synthesize_utterance(self._by_name[speaker], seconds, self.sample_rate, rng=rng)
        return np.ascontiguousarray(vad_trim(wave, self.sample_rate, top_db=self.trim_db))


class ListSource:
    """Recordings of a speaker-labelled list (``path<TAB>label`` or a Kaldi folder) as conversation material.

    A speaker is named after the folder holding its recordings when they all share one, else ``speaker<label>``.
    A turn joins random recordings of the speaker (silence trimmed) with 0.1-0.3 s gaps until it is long enough.

    >>> import tempfile, pathlib
    >>> from mvector.data.synthetic import generate_corpus
    >>> lst = generate_corpus(tempfile.mkdtemp(), num_speakers=2, utterances_per_speaker=2, sample_rate=8000,
    ...                       min_duration=1.0, max_duration=1.0)
    >>> src = ListSource(lst, sample_rate=8000)
    >>> src.speakers(), 0.5 < len(src.speech("spk001", 1.5, np.random.default_rng(0))) / 8000 <= 1.5
    (['spk000', 'spk001'], True)
    """

    def __init__(self, list_path: PathLike, sample_rate: int = 16000, trim_db: float = 30.0) -> None:
        from mvector.data.lists import load_utterances

        utts = load_utterances(list_path)
        by_label: dict[int, list[str]] = defaultdict(list)
        for utt in utts:
            by_label[utt.label].append(utt.path)
        if not by_label:
            raise DataListError(f"{list_path}: the list holds no recordings")
        self._files: dict[str, list[str]] = {}
        for label in sorted(by_label):
            parents = {Path(p).parent.name for p in by_label[label]}
            name = parents.pop() if len(parents) == 1 else f"speaker{label}"
            if name in self._files:
                name = f"{name}_{label}"
            self._files[name] = sorted(by_label[label])
        self.sample_rate = int(sample_rate)
        self.trim_db = float(trim_db)

    def speakers(self) -> list[str]:
        """The speakers' names, in label order."""
        return list(self._files)

    def speech(self, speaker: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
        """Random recordings of ``speaker`` joined until ``seconds`` are filled, then cut to ``seconds``."""
        target = int(round(seconds * self.sample_rate))
        pieces: list[np.ndarray] = []
        length = 0
        files = self._files[speaker]
        while length < target:
            path = files[int(rng.integers(len(files)))]
            wave = vad_trim(load_audio(path, self.sample_rate), self.sample_rate, top_db=self.trim_db)
            wave = normalize_db(np.ascontiguousarray(wave), -20.0)
            if pieces:
                gap = np.zeros(int(rng.uniform(0.1, 0.3) * self.sample_rate), dtype=np.float32)
                pieces.append(gap)
                length += len(gap)
            pieces.append(wave)
            length += len(wave)
        return np.concatenate(pieces)[:target]


@dataclass(frozen=True)
class TurnPlan:
    """Settings of the turn-taking (seconds); see the module docs.

    >>> TurnPlan(overlap=0.2).max_overlap
    1.0
    """

    min_turn: float = 1.0
    max_turn: float = 6.0
    min_pause: float = 0.1
    max_pause: float = 1.0
    overlap: float = 0.0
    max_overlap: float = 1.0
    level_db: float = -26.0
    level_spread_db: float = 4.0
    noise_db: float = -55.0

    def __post_init__(self) -> None:
        if not 0.0 < self.min_turn <= self.max_turn:
            raise ConfigError(f"need 0 < min_turn <= max_turn, got {self.min_turn} and {self.max_turn}")
        if not 0.0 <= self.min_pause <= self.max_pause:
            raise ConfigError(f"need 0 <= min_pause <= max_pause, got {self.min_pause} and {self.max_pause}")
        if not 0.0 <= self.overlap <= 1.0:
            raise ConfigError(f"overlap is a probability in [0, 1], got {self.overlap}")
        if self.max_overlap < 0:
            raise ConfigError(f"max_overlap must be >= 0, got {self.max_overlap}")


def plan_turns(
    speakers: Sequence[str], duration: float, plan: TurnPlan, rng: np.random.Generator
) -> Iterator[tuple[str, float, float]]:
    """Yield ``(speaker, start_s, planned_length_s)`` turns: everyone talks, nobody follows themself.

    >>> turns = list(plan_turns(["a", "b", "c"], 10.0, TurnPlan(), np.random.default_rng(0)))
    >>> sorted({t[0] for t in turns}), all(x[0] != y[0] for x, y in zip(turns, turns[1:]))
    (['a', 'b', 'c'], True)
    """
    if not speakers:
        raise ConfigError("a conversation needs at least one speaker")
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    pos = float(rng.uniform(0.2, 1.0))
    previous = None
    count = 0
    while pos < duration or count < len(speakers):
        if count < len(order):
            speaker = order[count]
        else:
            choices = [s for s in speakers if s != previous] or list(speakers)
            speaker = choices[int(rng.integers(len(choices)))]
        length = float(rng.uniform(plan.min_turn, plan.max_turn))
        yield speaker, pos, length
        count += 1
        previous = speaker
        if count >= len(speakers) and rng.random() < plan.overlap and plan.max_overlap > 0:
            pos += length - float(rng.uniform(0.2, 1.0) * min(plan.max_overlap, length / 2))
        else:
            pos += length + float(rng.uniform(plan.min_pause, plan.max_pause))


def overlap_regions(turns: Sequence[Segment]) -> list[tuple[float, float]]:
    """Regions (seconds) where two or more of ``turns`` run at once, merged and sorted.

    >>> overlap_regions([Segment(0, 4, "a"), Segment(3, 6, "b"), Segment(5, 7, "a"), Segment(5.5, 6.5, "c")])
    [(3, 4), (5, 6.5)]
    """
    events = sorted([(t.start, 1) for t in turns] + [(t.end, -1) for t in turns], key=lambda e: (e[0], e[1]))
    out: list[tuple[float, float]] = []
    talking, opened = 0, 0.0
    for time, change in events:
        if change > 0:
            talking += 1
            if talking == 2:
                opened = time
            continue
        if talking == 2 and time > opened:
            if out and abs(out[-1][1] - opened) < 1e-9:
                out[-1] = (out[-1][0], time)
            else:
                out.append((opened, time))
        talking -= 1
    return out


@dataclass
class Conversation:
    """A generated conversation: mono float32 ``samples``, its ``sample_rate`` and the reference ``turns``.

    >>> Conversation(np.zeros(8000, "float32"), 8000, []).duration
    1.0
    """

    samples: np.ndarray
    sample_rate: int
    turns: list[Segment]

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    @property
    def speakers(self) -> list[str]:
        """Speakers in order of their first turn."""
        return list(dict.fromkeys(t.speaker for t in sorted(self.turns)))

    @property
    def overlap_seconds(self) -> float:
        """Seconds in which two or more speakers talk at once (:func:`overlap_regions`)."""
        return float(sum(b - a for a, b in overlap_regions(self.turns)))


def _pick_source(source: VoiceSource | None, num_speakers: int, seed: int, sample_rate: int) -> VoiceSource:
    if source is None:
        return SyntheticSource(num_speakers, seed=seed, sample_rate=sample_rate)
    if int(getattr(source, "sample_rate", sample_rate)) != int(sample_rate):
        raise ConfigError(f"the voice source makes {source.sample_rate} Hz audio but sample_rate is {sample_rate}")
    return source


def _turns(
    num_speakers: int, duration: float, source: VoiceSource, plan: TurnPlan, seed: int
) -> Iterator[tuple[int, np.ndarray, str]]:
    """Yield ``(start_sample, samples, speaker)`` per turn, in start order."""
    if isinstance(num_speakers, bool) or int(num_speakers) < 1:
        raise ConfigError(f"num_speakers must be >= 1, got {num_speakers!r}")
    if not duration > 0:
        raise ConfigError(f"duration must be > 0 seconds, got {duration!r}")
    pool = source.speakers()
    if len(pool) < int(num_speakers):
        raise ConfigError(f"the voice source has {len(pool)} speakers, fewer than num_speakers={num_speakers}")
    rng = np.random.default_rng([int(seed), 0xC0417])
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), int(num_speakers), replace=False))]
    gains = {s: 10.0 ** (float(rng.uniform(-plan.level_spread_db, plan.level_spread_db)) / 20.0) for s in chosen}
    rate = int(source.sample_rate)
    for index, (speaker, start, length) in enumerate(plan_turns(chosen, duration, plan, rng)):
        turn_rng = np.random.default_rng([int(seed), index, 0x7A11])
        wave = normalize_db(np.asarray(source.speech(speaker, length, turn_rng), dtype=np.float32), plan.level_db)
        yield int(round(start * rate)), (wave * np.float32(gains[speaker])).astype(np.float32), speaker


def _mix(
    num_speakers: int, duration: float, source: VoiceSource, plan: TurnPlan, seed: int, block: int
) -> Iterator[tuple[np.ndarray | None, Segment | None]]:
    """Yield finished blocks of mixed audio and the turns, holding only the audio not yet final."""
    rate = int(source.sample_rate)
    noise_rng = np.random.default_rng([int(seed), 0x0015E])
    noise_amp = np.float32(10.0 ** (plan.noise_db / 20.0))
    buffer = np.zeros(0, dtype=np.float32)
    base = 0  # sample index of buffer[0]
    for start, wave, speaker in _turns(num_speakers, duration, source, plan, seed):
        if len(wave) == 0:
            continue
        end = start + len(wave)
        yield None, Segment(start / rate, end / rate, speaker)
        need = end - base
        if need > len(buffer):
            buffer = np.concatenate((buffer, np.zeros(need - len(buffer), dtype=np.float32)))
        buffer[start - base : end - base] += wave
        while start - base >= block:  # later turns never start before this one: the head is final
            head = buffer[:block] + noise_amp * noise_rng.standard_normal(block, dtype=np.float32)
            yield head, None
            buffer = buffer[block:]
            base += block
    tail = max(len(buffer), int(math.ceil(duration * rate)) - base) + int(0.5 * rate)
    buffer = np.concatenate((buffer, np.zeros(tail - len(buffer), dtype=np.float32)))
    for first in range(0, len(buffer), block):
        piece = buffer[first : first + block]
        yield piece + noise_amp * noise_rng.standard_normal(len(piece), dtype=np.float32), None


def generate_conversation(
    num_speakers: int = 2,
    duration: float = 60.0,
    *,
    source: VoiceSource | None = None,
    seed: int = 0,
    sample_rate: int = 16000,
    **plan: float,
) -> Conversation:
    """A conversation held in memory (see the module docs); ``plan`` keys are :class:`TurnPlan` fields.

    Without ``source``, ``num_speakers`` synthetic voices drawn with ``seed`` talk. Every turn is brought to
    ``level_db`` dBFS RMS plus its speaker's gain; samples are clipped to [-1, 1) exactly as
    :func:`write_conversation` writes them (rare at the default level).

    >>> c = generate_conversation(3, 5.0, seed=2, sample_rate=8000, max_turn=1.5, overlap=1.0)
    >>> len(c.speakers), any(a.end > b.start for a, b in zip(c.turns, c.turns[1:]))
    (3, True)
    """
    src = _pick_source(source, num_speakers, seed, sample_rate)
    blocks, turns = [], []
    for block, turn in _mix(num_speakers, duration, src, TurnPlan(**plan), seed, 1 << 16):
        if block is not None:
            blocks.append(block)
        if turn is not None:
            turns.append(turn)
    samples = np.clip(np.concatenate(blocks), -1.0, _MAX_SAMPLE)
    return Conversation(samples, int(sample_rate), sorted(turns))


def write_conversation(
    out_dir: PathLike,
    name: str,
    num_speakers: int = 2,
    duration: float = 60.0,
    *,
    source: VoiceSource | None = None,
    seed: int = 0,
    sample_rate: int = 16000,
    **plan: float,
) -> tuple[Path, Path]:
    """Write ``out_dir/name.wav`` (16-bit PCM) and ``out_dir/name.rttm``; return both paths.

    The audio is mixed and written a block at a time (memory does not grow with ``duration``); samples are
    clipped to [-1, 1). Both files appear atomically.

    >>> import tempfile
    >>> wav, rttm = write_conversation(tempfile.mkdtemp(), "c1", 2, 4.0, sample_rate=8000, max_turn=2.0)
    >>> wav.name, rttm.read_text().split()[:2]
    ('c1.wav', ['SPEAKER', 'c1'])
    """
    import soundfile

    if not name or os.path.basename(name) != name or name.startswith("."):
        raise ConfigError(f"name must be a plain file name without folders, got {name!r}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    src = _pick_source(source, num_speakers, seed, sample_rate)
    wav_path = folder / f"{name}.wav"
    tmp = folder / f".{name}.{os.getpid()}.wav.tmp"
    turns = []
    try:
        with soundfile.SoundFile(
            tmp, "w", samplerate=int(sample_rate), channels=1, subtype="PCM_16", format="WAV"
        ) as f:
            for block, turn in _mix(num_speakers, duration, src, TurnPlan(**plan), seed, 1 << 16):
                if block is not None:
                    f.write(np.clip(block, -1.0, _MAX_SAMPLE))
                if turn is not None:
                    turns.append(turn)
            f.flush()
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, wav_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    rttm_path = atomic_write_text(folder / f"{name}.rttm", format_rttm(name, sorted(turns)))
    return wav_path, rttm_path


def generate_conversations(
    out_dir: PathLike,
    count: int,
    num_speakers: int | Sequence[int] = (2, 3, 4, 5),
    duration: float = 60.0,
    *,
    source: VoiceSource | None = None,
    seed: int = 0,
    sample_rate: int = 16000,
    **plan: float,
) -> list[tuple[Path, Path, int]]:
    """Write ``count`` conversations ``conv000.wav/.rttm``, ... cycling through ``num_speakers``.

    Returns ``[(wav, rttm, speakers), ...]``. Conversation ``i`` uses seed ``seed + i``. Without ``source``
    every conversation gets its own synthetic voices.

    >>> import tempfile
    >>> out = generate_conversations(tempfile.mkdtemp(), 2, (2, 3), 3.0, sample_rate=8000, max_turn=1.0)
    >>> [(w.name, n) for w, _, n in out]
    [('conv000.wav', 2), ('conv001.wav', 3)]
    """
    counts = [int(num_speakers)] if isinstance(num_speakers, (int, np.integer)) else [int(n) for n in num_speakers]
    if not counts:
        raise ConfigError("num_speakers must be a number or a non-empty list of numbers")
    out = []
    for i in range(int(count)):
        n = counts[i % len(counts)]
        wav, rttm = write_conversation(
            out_dir, f"conv{i:03d}", n, duration, source=source, seed=seed + i, sample_rate=sample_rate, **plan
        )
        out.append((wav, rttm, n))
    return out
