"""Exception types raised by mvector.

Every error a user can cause (bad audio, a bad list line, a misspelt config key, a damaged checkpoint,
a bad speaker name) raises a subclass of :class:`MVectorError` whose message names the file, line or key.

>>> try:
...     raise AudioError("clip.wav: empty audio")
... except MVectorError as err:
...     print(err)
clip.wav: empty audio
"""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping


class MVectorError(Exception):
    """Base class of every error mvector raises on purpose."""


class AudioError(MVectorError, ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite, too short, wrong sample rate."""


class ConfigError(MVectorError, ValueError):
    """A configuration problem: unknown key, wrong type, unknown name."""


class DataListError(MVectorError, ValueError):
    """A data list (or trial list) with missing files, bad labels, duplicates or bad lines."""


class CheckpointError(MVectorError, RuntimeError):
    """A checkpoint that is missing, damaged, or does not match the configuration."""


class SpeakerDBError(MVectorError, RuntimeError):
    """A speaker-database problem: bad name, unknown speaker, database from another model."""


class InvalidNameError(SpeakerDBError, ValueError):
    """A speaker name the database refuses (see :func:`mvector.inference.speaker_names.validate_name`)."""


class UnknownSpeakerError(SpeakerDBError, LookupError):
    """A write or lookup of a speaker who is not enrolled."""


class SpeakerExistsError(SpeakerDBError):
    """An enrolment of a new speaker under a name that is already enrolled."""


class StoreError(MVectorError, RuntimeError):
    """A problem with the store behind galleries and keys (:mod:`mvector.store`): bad location, bad gallery name."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached now (PostgreSQL down, timed out); the operation did not happen. The service
    answers it with 503 ``store_unavailable``; retrying later is safe."""


def nearest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name closest to ``name``, or None when nothing is close.

    >>> nearest("batchsize", ["batch_size", "num_workers"])
    'batch_size'
    """
    valid = list(valid)
    lowered = {v.lower(): v for v in valid}
    if name.lower() in lowered:
        return lowered[name.lower()]
    hits = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return hits[0] if hits else None


def check_keys(given: Mapping[str, object], valid: Iterable[str], where: str) -> None:
    """Raise :class:`ConfigError` for the first key of ``given`` not in ``valid``, naming the nearest one.

    ``where`` names the section for the message, e.g. ``"feature_conf (Fbank)"``.

    >>> check_keys({"n_mels": 80}, ["n_mels", "n_fft"], "feature_conf")
    >>> check_keys({"n_mel": 80}, ["n_mels", "n_fft"], "feature_conf")
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: unknown key 'n_mel' in feature_conf; did you mean 'n_mels'? Valid keys: n_fft, n_mels
    """
    valid = sorted(set(valid))
    for key in given:
        if key not in valid:
            guess = nearest(str(key), valid)
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise ConfigError(f"unknown key {key!r} in {where}{hint} Valid keys: {', '.join(valid)}")


def unknown_name_error(kind: str, name: str, valid: Iterable[str]) -> ConfigError:
    """A :class:`ConfigError` for an unknown registry name that lists the valid ones.

    >>> print(unknown_name_error("backbone", "Ecapa", ["EcapaTdnn", "TDNN"]))
    unknown backbone 'Ecapa'; did you mean 'EcapaTdnn'? Valid: EcapaTdnn, TDNN
    """
    valid = sorted(set(valid))
    guess = nearest(name, valid)
    hint = f"; did you mean {guess!r}?" if guess else ""
    return ConfigError(f"unknown {kind} {name!r}{hint} Valid: {', '.join(valid)}")
