"""Speaker names: the one rule that says which names are allowed and when two names are the same name.

A name is shown to people, compared by programs and (with kept audio) part of a folder name, so two names that
look alike must be one name, and a name must not hide anything. :func:`validate_name` is used by the speaker
database, so the Python API, the CLI and the HTTP service all apply the same rule:

* Unicode NFKC normalisation: fullwidth ``ａｌｉｃｅ`` becomes ``alice``, ``ﬁ`` becomes ``fi``, a composed and a
  decomposed ``é`` are one letter; surrounding white space is stripped and runs of inner white space become one space.
* Refused: invisible characters (zero-width space and joiners, soft hyphen, word joiner, Hangul fillers, variation
  selectors and every other default-ignorable code point), bidirectional controls (``U+202A..U+202E``,
  ``U+2066..U+2069``, ``U+200E``/``U+200F``), control, private-use and unassigned characters, line separators.
* Refused: a mix of scripts that look alike, in the spirit of Unicode TS #39 "moderately restrictive": the letters of
  a name come from one script, or from Latin plus one script other than Cyrillic and Greek, or from the usual
  East-Asian sets (Han with Hiragana/Katakana, Hangul or Bopomofo, with or without Latin). So Cyrillic ``аlice`` (a
  Cyrillic ``а`` among Latin letters) is refused, while ``José``, ``Αλέξανδρος`` and ``山田 Taro`` are fine.
  A name written wholly in one script that merely looks like a name in another (Cyrillic ``аѕ``) is not detected.
* Empty names, names over 100 characters, ``/``, ``\\``, ``.`` and ``..`` and the database's own file names.

>>> validate_name("  ａｌｉｃｅ  ")
'alice'
>>> validate_name("Ann   Lee")
'Ann Lee'
>>> validate_name("alice\\u200b")
Traceback (most recent call last):
...
mvector.errors.InvalidNameError: bad speaker name 'alice\\u200b': it holds an invisible character (U+200B ZERO WIDTH \
SPACE)
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from mvector.errors import InvalidNameError

__all__ = ["MAX_NAME_LENGTH", "RESERVED_NAMES", "normalise_name", "script_of", "validate_name"]

MAX_NAME_LENGTH = 100
#: Names of the database's own files and folders (compared case-insensitively).
RESERVED_NAMES = frozenset(
    {"speakers.sqlite", "speakers.sqlite-wal", "speakers.sqlite-shm", "speakers.sqlite-journal", ".trash"}
)

# Default-ignorable code points (Unicode DerivedCoreProperties), drawn as nothing.
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164"
    "\ufe00-\ufe0f\ufeff\uffa0\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]")
_SPACES = re.compile(r"\s+")
# Character categories never allowed: control, format, surrogate, private use, unassigned, line/paragraph separator.
_BAD_CATEGORIES = {"Cc": "a control character", "Cf": "an invisible formatting character", "Cs": "a surrogate",
                   "Co": "a private-use character", "Cn": "an unassigned code point", "Zl": "a line separator",
                   "Zp": "a paragraph separator"}  # fmt: skip
# Unicode character names start with the script for most letters; these words name another script or none.
_SCRIPT_WORDS = {"CJK": "Han", "IDEOGRAPHIC": "Han", "KANGXI": "Han", "HIRAGANA": "Hiragana", "KATAKANA": "Katakana",
                 "HANGUL": "Hangul", "BOPOMOFO": "Bopomofo"}  # fmt: skip
_EAST_ASIAN = ({"Han", "Hiragana", "Katakana"}, {"Han", "Hangul"}, {"Han", "Bopomofo"})
_LOOK_ALIKE = {"Cyrillic", "Greek"}  # scripts whose letters copy Latin ones


def _describe(char: str) -> str:
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}"


def script_of(char: str) -> str | None:
    """The script of a letter (``"Latin"``, ``"Cyrillic"``, ``"Han"`` ...), or None for a character shared by all
    scripts (digits, spaces, punctuation, symbols, combining marks).

    >>> script_of("a"), script_of("а"), script_of("語"), script_of("7"), script_of("-")
    ('Latin', 'Cyrillic', 'Han', None, None)
    """
    if not unicodedata.category(char).startswith("L"):
        return None
    word = re.split(r"[ -]", unicodedata.name(char, ""), maxsplit=1)[0]
    if not word:
        return None
    return _SCRIPT_WORDS.get(word, word.title())


def _allowed_mix(scripts: set[str]) -> bool:
    if len(scripts) <= 1:
        return True
    others = scripts - {"Latin"}
    if any(others <= group for group in _EAST_ASIAN):
        return True  # Japanese, Korean, Chinese (with or without Latin)
    return "Latin" in scripts and len(others) == 1 and not (others & _LOOK_ALIKE)


def normalise_name(name: str) -> str:
    """The name in its one written form (NFKC, stripped, inner white space collapsed), without checking it.

    >>> normalise_name(" Ｂｏｂ\\u3000Smith ")
    'Bob Smith'
    """
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", name)).strip()


def validate_name(name: Any) -> str:
    """Check a speaker name and return its normalised form (see the module docstring for the rule).

    Raises :class:`~mvector.errors.InvalidNameError` (a :class:`~mvector.errors.SpeakerDBError`) naming the problem.

    >>> validate_name("  Alice Smith ")
    'Alice Smith'
    >>> validate_name("../x")
    Traceback (most recent call last):
    ...
    mvector.errors.InvalidNameError: bad speaker name '../x': it must not contain '/' or '\\\\'
    >>> validate_name("p\\u0430ul")  # a Cyrillic 'а' among Latin letters
    Traceback (most recent call last):
    ...
    mvector.errors.InvalidNameError: bad speaker name 'pаul': it mixes Cyrillic and Latin letters (look-alike letters \
of different scripts; write it in one script)
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"bad speaker name {name!r}: it must be a string, not {type(name).__name__}")
    shown = name if len(name) <= 40 else name[:40] + "..."

    def bad(reason: str) -> InvalidNameError:
        return InvalidNameError(f"bad speaker name {shown!r}: {reason}")

    if len(name) > 4 * MAX_NAME_LENGTH:  # bound the work on absurd input before normalising it
        raise bad(f"it has {len(name)} characters, at most {MAX_NAME_LENGTH}")
    for char in name:  # judged before normalisation: NFKC may turn some of these into ordinary spaces
        category = unicodedata.category(char)
        if _BIDI.match(char):
            raise bad(f"it holds a bidirectional control character ({_describe(char)})")
        if _IGNORABLE.match(char) or (category == "Cf"):
            raise bad(f"it holds an invisible character ({_describe(char)})")
        if category in _BAD_CATEGORIES:
            what = _BAD_CATEGORIES[category]
            if char == "\x00":
                raise bad("it must not contain a NUL character")
            raise bad(f"it must not contain control characters (found {what}, {_describe(char)})")
    clean = normalise_name(name)
    if not clean:
        raise bad("it is empty")
    if len(clean) > MAX_NAME_LENGTH:
        raise bad(f"it has {len(clean)} characters, at most {MAX_NAME_LENGTH}")
    if "/" in clean or "\\" in clean:
        raise bad("it must not contain '/' or '\\\\'")
    if clean in (".", ".."):
        raise bad("'.' and '..' are not allowed")
    if clean.lower() in RESERVED_NAMES:
        raise bad("it is reserved for the database's own files")
    if _IGNORABLE.search(clean):  # NFKC can make one (e.g. U+FFA0 -> U+3164)
        raise bad(f"it holds an invisible character ({_describe(_IGNORABLE.search(clean).group())})")
    if all(unicodedata.category(c)[0] in "MZ" for c in clean):
        raise bad("it has no visible character")
    scripts = {s for s in map(script_of, clean) if s is not None}
    if not _allowed_mix(scripts):
        listed = " and ".join(sorted(scripts)) if len(scripts) == 2 else ", ".join(sorted(scripts))
        raise bad(f"it mixes {listed} letters (look-alike letters of different scripts; write it in one script)")
    return clean
