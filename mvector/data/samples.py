"""Sample recordings for the README's examples: synthetic speakers written under the names the examples use.

``mvector samples DIR`` (or :func:`write_samples`) writes, from the voices of :mod:`mvector.data.synthetic`:

* ``a.wav``, ``b.wav``: two recordings of one speaker (``contrast`` examples); ``c.wav``: another speaker;
* ``alice1.wav`` .. ``alice3.wav``, ``bob1.wav`` .. ``bob3.wav``: enrolment recordings; ``alice.wav`` and
  ``who.wav``: Alice again; ``unknown.wav``, ``unknown1.wav``, ``unknown2.wav``: voices nobody enrolled;
* ``meeting.wav``: Alice and Bob taking turns (``diarize``);
* ``pairs/`` and ``my_pairs.txt``: 12 further speakers × 4 recordings and every pair of them as a trial list
  (``label enroll test``), enough for ``mvector calibrate`` to store an operating point.

Synthetic voices are not people: the files make the commands run, they say nothing about accuracy on real speech.

>>> import tempfile
>>> written = write_samples(tempfile.mkdtemp(), pair_speakers=2, pair_recordings=2)
>>> sorted(p.name for p in written if p.suffix == ".wav")[:4]
['a.wav', 'alice.wav', 'alice1.wav', 'alice2.wav']
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from mvector.audio import save_wav
from mvector.data.synthetic import make_voices, synthesize_utterance
from mvector.errors import ConfigError
from mvector.utils.files import atomic_write_text

__all__ = ["write_samples"]


def write_samples(
    folder: str | os.PathLike[str],
    seed: int = 0,
    sample_rate: int = 16000,
    pair_speakers: int = 12,
    pair_recordings: int = 4,
) -> list[Path]:
    """Write the sample recordings into ``folder`` (created); returns the files written. Same seed, same bytes."""
    if pair_speakers < 2 or pair_recordings < 2:
        raise ConfigError("pair_speakers and pair_recordings must be at least 2")
    root = Path(folder)
    voices = make_voices(4 + pair_speakers, seed=seed)
    alice, bob, carol, stranger = voices[:4]
    written: list[Path] = []

    def utter(voice, key: int, seconds: float = 3.0) -> np.ndarray:
        return synthesize_utterance(voice, seconds, sample_rate, rng=np.random.default_rng([seed, key]))

    def put(name: str, samples: np.ndarray) -> None:
        save_wav(root / name, samples, sample_rate)
        written.append(root / name)

    plan = [("a.wav", alice, 1), ("b.wav", alice, 2), ("c.wav", carol, 3), ("alice.wav", alice, 4),
            ("who.wav", alice, 5), ("unknown.wav", stranger, 6), ("unknown1.wav", stranger, 7),
            ("unknown2.wav", carol, 8)]  # fmt: skip
    plan += [(f"alice{k}.wav", alice, 10 + k) for k in (1, 2, 3)] + [(f"bob{k}.wav", bob, 20 + k) for k in (1, 2, 3)]
    for name, voice, key in plan:
        put(name, utter(voice, key))
    turns = [utter(alice if k % 2 == 0 else bob, 40 + k, 2.5) for k in range(6)]
    gap = np.zeros(int(0.3 * sample_rate), dtype=np.float32)
    put("meeting.wav", np.concatenate([x for t in turns for x in (t, gap)]))
    files = []
    for s, voice in enumerate(voices[4:]):
        for k in range(pair_recordings):
            name = f"pairs/spk{s:02d}_{k}.wav"
            put(name, utter(voice, 1000 + 10 * s + k, 2.5))
            files.append((s, name))
    lines = [f"{int(sa == sb)} {fa} {fb}\n" for (sa, fa), (sb, fb) in itertools.combinations(files, 2)]
    atomic_write_text(root / "my_pairs.txt", "".join(lines))
    written.append(root / "my_pairs.txt")
    return written
