"""API keys and the audit log of the HTTP service, kept by the store (:mod:`mvector.store`): in
``<audio_db_path>/service.sqlite`` for a folder, in the shared tables of a ``postgresql://`` store for replicas.

A key is ``mvk_<id>_<secret>``: a 12-hex-digit id (shown in listings, used to revoke) and 256 random bits. Only the
SHA-256 of the whole key is stored; a presented key is looked up by its id and its hash compared in constant time
(:func:`hmac.compare_digest`). Scopes are cumulative: ``read`` (embed, verify, identify, list), ``write`` (also
enrol and delete speakers), ``admin`` (also manage keys and read the audit log). A key may be limited to some named
galleries (``galleries``; None: all of them); an admin key always reaches every gallery.

The audit log records every write the service performs or refuses (who: key id and name; when; what: action,
target, gallery, HTTP status, client address, and which replica wrote the line: host name and process id, or the
``replica`` name given). Every change is one transaction of the store, so a key created or revoked through one
replica is honoured or refused by every other one at its next request. Every text field is stored escaped
(:func:`escape_text`: control, format and separator characters become ``\\xNN`` / ``\\uNNNN``), so no output can
carry a forged line or a terminal escape. Refused requests (status 400 and up) of one key, client, action, status
and replica within :data:`AGGREGATE_S` seconds are one row whose
``count`` grows; the default listing shows the writes that happened (``refused=False``), so refusals never push
them out of view. Rows older than ``retention_days`` are deleted (at open and every 1000 entries).

>>> import tempfile
>>> store = KeyStore(tempfile.mkdtemp())
>>> info, token = store.create("admin", name="ops")
>>> store.authenticate(token).scope, store.authenticate(token + "x")
('admin', None)
>>> store.revoke(info.key_id).revoked is not None, store.authenticate(token)
(True, None)
>>> store.close()
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import socket
import time
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Union

from mvector.errors import ConfigError, MVectorError, StoreError, StoreUnavailableError
from mvector.store import AuditRow, KeyRow, Store, check_gallery, open_store
from mvector.store.sqlite import SERVICE_DB

__all__ = [
    "KeyStore",
    "KeyInfo",
    "AuditEntry",
    "SCOPES",
    "SERVICE_DB",
    "KeyStoreError",
    "scope_allows",
    "escape_text",
    "AGGREGATE_S",
    "OUTCOMES",
    "default_replica",
]

#: Scopes, weakest first; each includes the ones before it.
SCOPES = ("read", "write", "admin")
_PREFIX = "mvk_"
_TOKEN = re.compile(r"^mvk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_MAX_NAME = 100
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()
#: Refusals of one (key, client, action, status) within this many seconds of the row's first one share a row.
AGGREGATE_S = 3600.0
#: Which audit entries a listing shows: writes that happened, refused requests, or both.
OUTCOMES = ("done", "refused", "all")
_PURGE_EVERY = 1000

class KeyStoreError(MVectorError, ValueError):
    """A key-store problem a user can act on: unknown key id, bad scope or name, unreadable file."""


def scope_allows(granted: str, needed: str) -> bool:
    """Whether a key of scope ``granted`` may use a route that needs ``needed`` (scopes are cumulative).

    >>> scope_allows("write", "read"), scope_allows("read", "write"), scope_allows("admin", "admin")
    (True, False, True)
    """
    return SCOPES.index(granted) >= SCOPES.index(needed)


def escape_text(text: Any, backslash: bool = True) -> str | None:
    """``text`` with every character that could forge or hide output escaped: control (Cc), format (Cf: bidi
    overrides, zero-width), separator (Zl, Zp) and unassigned characters, and (with ``backslash``) the
    backslash itself, so that stored text reads back unambiguously. Printing uses ``backslash=False``.

    >>> escape_text("x\\n2026 forged\\x1b[2J\\u202e")
    'x\\\\x0a2026 forged\\\\x1b[2J\\\\u202e'
    >>> escape_text("Zoë Ω"), escape_text(None)
    ('Zoë Ω', None)
    """
    if text is None:
        return None
    out = []
    for ch in str(text):
        if ch == "\\" and backslash:
            out.append("\\\\")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise KeyStoreError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return scope


def _check_label(name: str, what: str = "key name") -> str:
    if not isinstance(name, str):
        raise KeyStoreError(f"{what} must be a string, got {type(name).__name__}")
    name = name.strip()
    if len(name) > _MAX_NAME:
        raise KeyStoreError(f"{what} is {len(name)} characters long, at most {_MAX_NAME}")
    if _CONTROL.search(name):
        raise KeyStoreError(f"{what} {name!r} must not contain control characters")
    return name


@dataclass(frozen=True)
class KeyInfo:
    """What is known about a key (never the key itself).

    >>> KeyInfo("0123456789ab", "ci", "read", 0.0, None, None).active
    True
    """

    key_id: str
    name: str
    scope: str
    created: float
    created_by: str | None
    revoked: float | None
    galleries: tuple[str, ...] | None = None

    @property
    def active(self) -> bool:
        """False once revoked."""
        return self.revoked is None

    def may_use(self, gallery: str) -> bool:
        """Whether this key may read or write ``gallery`` (an admin key, or a key without a gallery list: any).

        >>> key = KeyInfo("0123456789ab", "app", "write", 0.0, None, None, ("house",))
        >>> key.may_use("house"), key.may_use("office")
        (True, False)
        """
        return self.scope == "admin" or self.galleries is None or gallery in self.galleries

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, times as ISO 8601 UTC strings (``galleries``: null for every gallery)."""
        out = asdict(self)
        out["created"] = _iso(self.created)
        out["revoked"] = _iso(self.revoked) if self.revoked is not None else None
        out["galleries"] = None if self.galleries is None else list(self.galleries)
        out["active"] = self.active
        return out


@dataclass(frozen=True)
class AuditEntry(AuditRow):
    """One audited write: who (key), when, what (action, target, gallery), how it ended (HTTP status), and which
    replica wrote it (the stored :class:`~mvector.store.AuditRow`, with its JSON form)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, times as ISO 8601 UTC strings (``last``: the latest of ``count`` refusals)."""
        out = asdict(self)
        out["time"] = _iso(self.time)
        out["last"] = _iso(self.last if self.last is not None else self.time)
        return out


def default_replica() -> str:
    """This process's name in the audit log: ``<host name>:<process id>``.

    >>> default_replica().endswith(f":{os.getpid()}")
    True
    """
    return f"{socket.gethostname()}:{os.getpid()}"


def _check_galleries(galleries: Iterable[str] | None, scope: str) -> tuple[str, ...] | None:
    """The checked, sorted gallery list of a new key (None: every gallery; an admin key always has None)."""
    if galleries is None:
        return None
    if isinstance(galleries, str):
        galleries = [g for g in galleries.split(",") if g.strip()]
    try:
        names = tuple(sorted({check_gallery(str(g).strip()) for g in galleries}))
    except StoreError as err:
        raise KeyStoreError(str(err)) from None
    if not names:
        raise KeyStoreError("galleries: give at least one gallery name, or none at all for every gallery")
    if scope == "admin":
        raise KeyStoreError("an admin key reaches every gallery; give galleries only to read or write keys")
    return names


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


class KeyStore:
    """The API keys and audit log of the store at ``location`` (a database folder, created when missing, or a
    ``postgresql://`` URL, or a :class:`~mvector.store.Store`).

    Safe to use from several threads, processes and machines: each change is one transaction of the store, so
    ``mvector keys revoke`` in a shell takes effect on every running replica's next request. ``replica`` names this
    process in the audit log (default: host name and process id).

    >>> import tempfile
    >>> with KeyStore(tempfile.mkdtemp(), replica="r1") as store:
    ...     info, token = store.create("read", name="app", galleries=["house"])
    ...     store.audit(info, "enrol", "alice", 201, client="127.0.0.1", gallery="house")
    ...     [k.galleries for k in store.list()], store.audit_log()[0].replica
    ([('house',)], 'r1')
    """

    def __init__(
        self,
        location: Union[str, os.PathLike, Store],
        create: bool = True,
        retention_days: float = 90.0,
        replica: str | None = None,
    ) -> None:
        if not retention_days > 0:
            raise KeyStoreError(f"retention_days must be > 0, got {retention_days!r}")
        self.retention_days = float(retention_days)
        self.replica = _check_label(replica, "replica name") if replica else default_replica()
        self._since_purge = 0
        self._own_store = not isinstance(location, Store)
        try:
            self._store = open_store(location)
            self._keys = self._store.keys()
        except StoreUnavailableError:
            raise
        except StoreError as err:
            raise KeyStoreError(str(err)) from None
        self.path = self._keys.where
        if not create and not self._keys.exists():
            raise KeyStoreError(
                f"{self.path} does not exist: no keys were created for this database yet "
                f"(mvector keys create --audio_db_path {self._store.where} --scope admin)"
            )
        self._call(self.purge)

    def _call(self, action: Any, *args: Any) -> Any:
        """Run a store call; a store problem (other than being unreachable) becomes a :class:`KeyStoreError`."""
        try:
            return action(*args)
        except StoreUnavailableError:
            raise
        except StoreError as err:
            raise KeyStoreError(str(err)) from None

    def close(self) -> None:
        """Close the store's connections (safe to call twice)."""
        self._keys.close()
        if self._own_store:
            self._store.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ keys
    def create(
        self, scope: str, name: str = "", created_by: str | None = None, galleries: Iterable[str] | None = None
    ) -> tuple[KeyInfo, str]:
        """Create a key of ``scope`` (limited to ``galleries`` when given); returns its info and the key itself
        (shown once, never stored).

        >>> import tempfile
        >>> with KeyStore(tempfile.mkdtemp()) as store:
        ...     info, token = store.create("write", name="enrolment kiosk")
        ...     token.startswith("mvk_" + info.key_id), len(token)
        (True, 60)
        """
        scope = _check_scope(scope)
        name = _check_label(name)
        limited = _check_galleries(galleries, scope)
        for _ in range(5):
            key_id = secrets.token_hex(6)
            token = f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            now = time.time()
            row = KeyRow(key_id, name, scope, _hash(token), now, created_by, None, limited)
            if self._call(self._keys.add_key, row):
                return _info(row), token
        raise KeyStoreError(f"{self.path}: could not draw an unused key id")

    def get(self, key_id: str) -> KeyInfo:
        """The key with id ``key_id`` (an unknown id raises :class:`KeyStoreError`)."""
        row = self._call(self._keys.get_key, str(key_id))
        if row is None:
            raise KeyStoreError(f"no API key with id {key_id!r} in {self.path} (see: mvector keys list)")
        return _info(row)

    def list(self, include_revoked: bool = True) -> list[KeyInfo]:
        """Every key, oldest first."""
        keys = [_info(r) for r in self._call(self._keys.list_keys)]
        return keys if include_revoked else [k for k in keys if k.active]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key (it stops working at once); revoking twice is harmless. Returns the key's info."""
        if isinstance(key_id, str) and key_id.startswith(_PREFIX):  # a whole key was pasted: use its id
            match = _TOKEN.match(key_id)
            key_id = match.group(1) if match else key_id
        info = self.get(key_id)
        if info.active:
            self._call(self._keys.revoke_key, info.key_id, time.time())
        return self.get(info.key_id)

    def authenticate(self, token: str | None) -> KeyInfo | None:
        """The active key matching ``token``, or None (unknown, malformed, revoked). Constant-time comparison.

        >>> import tempfile
        >>> with KeyStore(tempfile.mkdtemp()) as store:
        ...     store.authenticate(None), store.authenticate("mvk_000000000000_" + "A" * 43)
        (None, None)
        """
        match = _TOKEN.match(token) if isinstance(token, str) else None
        key_id = match.group(1) if match else ""
        row = self._call(self._keys.get_key, key_id) if key_id else None
        stored = row.hash if row is not None else _DUMMY_HASH
        # hash and compare even for an unknown id, so the answer takes the same time either way
        same = hmac.compare_digest(stored, _hash(token if isinstance(token, str) else ""))
        if row is None or not same or row.revoked is not None:
            return None
        return _info(row)

    # ------------------------------------------------------------------ audit
    def audit(
        self,
        key: KeyInfo | None,
        action: str,
        target: str | None,
        status: int,
        detail: str | None = None,
        client: str | None = None,
        gallery: str | None = None,
    ) -> None:
        """Record one write (its own transaction), with this replica's name. Text is stored escaped
        (:func:`escape_text`); a refusal (status >= 400) joins the row of the same key, client, action, status and
        replica opened within the last :data:`AGGREGATE_S` seconds (its ``count`` grows, ``target`` and ``detail``
        become the latest).
        """
        now = time.time()
        row = AuditRow(
            now,
            key.key_id if key else None,
            escape_text(key.name) if key else None,
            escape_text(action) or "",
            None if target is None else escape_text(str(target)[:200]),
            int(status),
            None if detail is None else escape_text(str(detail)[:500]),
            escape_text(client),
            replica=escape_text(self.replica),
            gallery=gallery,
        )
        self._call(self._keys.audit, row, now - AGGREGATE_S if int(status) >= 400 else None)
        self._since_purge += 1
        if self._since_purge >= _PURGE_EVERY:
            self.purge()

    def purge(self, now: float | None = None) -> int:
        """Delete audit rows older than ``retention_days`` (by their latest refusal); returns how many.

        >>> import tempfile
        >>> with KeyStore(tempfile.mkdtemp(), retention_days=1) as store:
        ...     store.audit(None, "enrol", "alice", 201)
        ...     store.purge(), store.purge(now=time.time() + 2 * 86400)
        (0, 1)
        """
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400.0
        self._since_purge = 0
        return self._call(self._keys.purge_audit, cutoff)

    def audit_log(self, limit: int = 100, action: str | None = None, outcome: str = "done") -> list[AuditEntry]:
        """The ``limit`` most recent audit entries, newest first: the writes that happened (``outcome="done"``,
        the default), the refusals (``"refused"``), or both (``"all"``); optionally only one ``action``.

        >>> import tempfile
        >>> with KeyStore(tempfile.mkdtemp()) as store:
        ...     store.audit(None, "enrol", "alice", 201)
        ...     for _ in range(3):
        ...         store.audit(None, "delete", "x\\n", 403)
        ...     [e.target for e in store.audit_log()], [(e.target, e.count) for e in store.audit_log(outcome="refused")]
        (['alice'], [('x\\\\x0a', 3)])
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive integer, got {limit!r}")
        if outcome not in OUTCOMES:
            raise ConfigError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        rows = self._call(self._keys.audit_rows, limit, action, outcome)
        return [AuditEntry(**asdict(r)) for r in rows]


def _info(row: KeyRow) -> KeyInfo:
    return KeyInfo(row.key_id, row.name, row.scope, row.created, row.created_by, row.revoked, row.galleries)
