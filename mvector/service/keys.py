"""API keys and the audit log of the HTTP service, in ``<audio_db_path>/service.sqlite``.

A key is ``mvk_<id>_<secret>``: a 12-hex-digit id (shown in listings, used to revoke) and 256 random bits. Only the
SHA-256 of the whole key is stored; a presented key is looked up by its id and its hash compared in constant time
(:func:`hmac.compare_digest`). Scopes are cumulative: ``read`` (embed, verify, identify, list), ``write`` (also
enrol and delete speakers), ``admin`` (also manage keys and read the audit log).

The audit log records every write the service performs or refuses (who: key id and name; when; what: action,
target, HTTP status, client address). The file is separate from the speaker database, in WAL mode; every change is
one transaction. Every text field is stored escaped (:func:`escape_text`: control, format and separator characters
become ``\\xNN`` / ``\\uNNNN``), so no output can carry a forged line or a terminal escape. Refused requests
(status 400 and up) of one key, client, action and status within :data:`AGGREGATE_S` seconds are one row whose
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
import sqlite3
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

from mvector.errors import ConfigError, MVectorError
from mvector.utils.files import create_private_file, private_mkdir

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
]

#: The key file inside the speaker-database folder.
SERVICE_DB = "service.sqlite"
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    created_by TEXT,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    key_id TEXT,
    key_name TEXT,
    action TEXT NOT NULL,
    target TEXT,
    status INTEGER NOT NULL,
    detail TEXT,
    client TEXT
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE INDEX IF NOT EXISTS audit_status ON audit (status, id);
"""


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

    @property
    def active(self) -> bool:
        """False once revoked."""
        return self.revoked is None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, times as ISO 8601 UTC strings."""
        out = asdict(self)
        out["created"] = _iso(self.created)
        out["revoked"] = _iso(self.revoked) if self.revoked is not None else None
        out["active"] = self.active
        return out


@dataclass(frozen=True)
class AuditEntry:
    """One audited write: who (key), when, what (action, target), and how it ended (HTTP status)."""

    time: float
    key_id: str | None
    key_name: str | None
    action: str
    target: str | None
    status: int
    detail: str | None
    client: str | None
    count: int = 1
    last: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, times as ISO 8601 UTC strings (``last``: the latest of ``count`` refusals)."""
        out = asdict(self)
        out["time"] = _iso(self.time)
        out["last"] = _iso(self.last if self.last is not None else self.time)
        return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


class KeyStore:
    """The API keys and audit log stored in ``<folder>/service.sqlite`` (created when missing).

    Safe to use from several threads and processes: each change is one SQLite transaction (WAL mode, busy
    timeout), so ``mvector keys revoke`` in a shell takes effect on the running server's next request.

    >>> import tempfile
    >>> with KeyStore(tempfile.mkdtemp()) as store:
    ...     info, token = store.create("read", name="app")
    ...     store.audit(info, "enrol", "alice", 201, client="127.0.0.1")
    ...     [k.scope for k in store.list()], store.audit_log()[0].action
    (['read'], 'enrol')
    """

    def __init__(self, folder: Union[str, os.PathLike], create: bool = True, retention_days: float = 90.0) -> None:
        if not retention_days > 0:
            raise KeyStoreError(f"retention_days must be > 0, got {retention_days!r}")
        self.retention_days = float(retention_days)
        self._since_purge = 0
        self.folder = Path(folder)
        self.path = self.folder / SERVICE_DB
        if not create and not self.path.is_file():
            raise KeyStoreError(
                f"{self.path} does not exist: no keys were created for this database yet "
                f"(mvector keys create --audio_db_path {self.folder} --scope admin)"
            )
        try:  # private whatever the umask: the file holds key hashes and the audit log (-wal/-shm follow its mode)
            private_mkdir(self.folder)
            create_private_file(self.path)
        except OSError as err:
            raise KeyStoreError(f"cannot create the folder {self.folder}: {err}") from None
        self._lock = threading.RLock()
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA busy_timeout = 30000")
            self._retry(lambda: self._conn.execute("PRAGMA journal_mode = WAL"))
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._retry(self._init_schema)
            self._retry(self.purge)
        except sqlite3.DatabaseError as err:
            raise KeyStoreError(f"{self.path}: cannot open the key database ({err})") from None

    @staticmethod
    def _retry(action, seconds: float = 30.0):
        deadline = time.monotonic() + seconds
        while True:
            try:
                return action()
            except sqlite3.OperationalError as err:
                if "locked" not in str(err).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _init_schema(self) -> None:
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
            if "count" not in columns:  # a file from before refusals were aggregated
                conn.execute("ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1")
                conn.execute("ALTER TABLE audit ADD COLUMN last REAL")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise KeyStoreError(f"{self.path}: the key database is closed")
        return self._conn

    def close(self) -> None:
        """Close the database (safe to call twice)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, params: tuple) -> sqlite3.Cursor:
        return self._transaction(lambda conn: conn.execute(sql, params))

    def _transaction(self, body: Any) -> Any:
        """Run ``body(connection)`` in one write transaction; returns what it returns."""
        with self._lock:
            conn = self._db
            try:
                conn.execute("BEGIN IMMEDIATE")
                out = body(conn)
                conn.execute("COMMIT")
                return out
            except BaseException as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(err, sqlite3.DatabaseError):
                    raise KeyStoreError(f"{self.path}: could not write to the key database ({err})") from None
                raise

    # ------------------------------------------------------------------ keys
    def create(self, scope: str, name: str = "", created_by: str | None = None) -> tuple[KeyInfo, str]:
        """Create a key of ``scope``; returns its info and the key itself (shown once, never stored).

        >>> import tempfile
        >>> with KeyStore(tempfile.mkdtemp()) as store:
        ...     info, token = store.create("write", name="enrolment kiosk")
        ...     token.startswith("mvk_" + info.key_id), len(token)
        (True, 60)
        """
        scope = _check_scope(scope)
        name = _check_label(name)
        for _ in range(5):
            key_id = secrets.token_hex(6)
            token = f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            now = time.time()
            try:
                self._write(
                    "INSERT INTO api_keys (id, name, scope, hash, created, created_by) VALUES (?, ?, ?, ?, ?, ?)",
                    (key_id, name, scope, _hash(token), now, created_by),
                )
            except KeyStoreError as err:
                if "UNIQUE" in str(err):  # an id collision (1 in 2^48): draw another
                    continue
                raise
            return KeyInfo(key_id, name, scope, now, created_by, None), token
        raise KeyStoreError(f"{self.path}: could not draw an unused key id")

    def _row(self, row: tuple) -> KeyInfo:
        return KeyInfo(row[0], row[1], row[2], float(row[3]), row[4], None if row[5] is None else float(row[5]))

    def get(self, key_id: str) -> KeyInfo:
        """The key with id ``key_id`` (an unknown id raises :class:`KeyStoreError`)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, scope, created, created_by, revoked FROM api_keys WHERE id = ?", (str(key_id),)
            ).fetchone()
        if row is None:
            raise KeyStoreError(f"no API key with id {key_id!r} in {self.path} (see: mvector keys list)")
        return self._row(row)

    def list(self, include_revoked: bool = True) -> list[KeyInfo]:
        """Every key, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, scope, created, created_by, revoked FROM api_keys ORDER BY created, id"
            ).fetchall()
        keys = [self._row(r) for r in rows]
        return keys if include_revoked else [k for k in keys if k.active]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key (it stops working at once); revoking twice is harmless. Returns the key's info."""
        if isinstance(key_id, str) and key_id.startswith(_PREFIX):  # a whole key was pasted: use its id
            match = _TOKEN.match(key_id)
            key_id = match.group(1) if match else key_id
        info = self.get(key_id)
        if info.active:
            self._write("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), info.key_id))
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
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, scope, created, created_by, revoked, hash FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        stored = row[6] if row is not None else _DUMMY_HASH
        # hash and compare even for an unknown id, so the answer takes the same time either way
        same = hmac.compare_digest(stored, _hash(token if isinstance(token, str) else ""))
        if row is None or not same or row[5] is not None:
            return None
        return self._row(row[:6])

    # ------------------------------------------------------------------ audit
    def audit(
        self,
        key: KeyInfo | None,
        action: str,
        target: str | None,
        status: int,
        detail: str | None = None,
        client: str | None = None,
    ) -> None:
        """Record one write (its own transaction). Text is stored escaped (:func:`escape_text`); a refusal
        (status >= 400) joins the row of the same key, client, action and status opened within the last
        :data:`AGGREGATE_S` seconds (its ``count`` grows, ``target`` and ``detail`` become the latest).
        """
        now = time.time()
        key_id = key.key_id if key else None
        fields = (
            escape_text(key.name) if key else None,
            escape_text(action),
            None if target is None else escape_text(str(target)[:200]),
            int(status),
            None if detail is None else escape_text(str(detail)[:500]),
            escape_text(client),
        )

        def record(conn: sqlite3.Connection) -> None:
            row = None
            if int(status) >= 400:
                row = conn.execute(
                    "SELECT id FROM audit WHERE status = ? AND action = ? AND key_id IS ? AND client IS ? "
                    "AND time >= ? ORDER BY id DESC LIMIT 1",
                    (int(status), fields[1], key_id, fields[5], now - AGGREGATE_S),
                ).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE audit SET count = count + 1, last = ?, target = ?, detail = ? WHERE id = ?",
                    (now, fields[2], fields[4], row[0]),
                )
            else:
                conn.execute(
                    "INSERT INTO audit (time, key_id, key_name, action, target, status, detail, client, count) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    (now, key_id, fields[0], fields[1], fields[2], fields[3], fields[4], fields[5]),
                )

        with self._lock:
            self._transaction(record)
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
        return self._write("DELETE FROM audit WHERE COALESCE(last, time) < ?", (cutoff,)).rowcount

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
        sql = "SELECT time, key_id, key_name, action, target, status, detail, client, count, last FROM audit"
        where, params = [], []
        if action is not None:
            where.append("action = ?")
            params.append(action)
        if outcome not in OUTCOMES:
            raise ConfigError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        if outcome != "all":
            where.append("status >= 400" if outcome == "refused" else "status < 400")
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            order = " ORDER BY COALESCE(last, time) DESC, id DESC LIMIT ?"
            rows = self._db.execute(sql + order, (*params, limit)).fetchall()
        return [AuditEntry(float(r[0]), r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], int(r[8]), r[9]) for r in rows]
