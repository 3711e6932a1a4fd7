"""Where galleries, API keys and the audit log live: one seam, two stores, chosen by a location.

* a plain path (``audio_db/``) is the folder store (:mod:`mvector.store.sqlite`): SQLite files, as every earlier
  version wrote them;
* ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``) is the PostgreSQL store
  (:mod:`mvector.store.postgres`, needs ``pip install mvector[postgres]``), which several service processes on
  several machines can share;
* anything else with ``://`` is refused with a clear error (it is not silently taken as a folder name).

The interfaces are in :mod:`mvector.store.base`.

>>> import tempfile
>>> store = open_store(tempfile.mkdtemp())
>>> type(store).__name__, store.gallery().name
('SQLiteStore', 'default')
>>> open_store("mysql://db/x")
Traceback (most recent call last):
...
mvector.errors.StoreError: 'mysql://db/x': unknown store URL scheme 'mysql'; give a folder path or a \
postgresql://user:password@host:port/dbname URL
>>> is_url("postgresql://h/db"), is_url("audio_db/")
(True, False)
"""

from __future__ import annotations

import os
from typing import Union

from mvector.errors import StoreError
from mvector.store.base import (
    DEFAULT_GALLERY,
    AuditRow,
    Changes,
    GalleryStore,
    GalleryWrite,
    KeyBackend,
    KeyRow,
    Store,
    StoredAnswer,
    check_gallery,
)

__all__ = [
    "DEFAULT_GALLERY",
    "POSTGRES_SCHEMES",
    "AuditRow",
    "Changes",
    "GalleryStore",
    "GalleryWrite",
    "KeyBackend",
    "KeyRow",
    "Store",
    "StoredAnswer",
    "check_gallery",
    "is_url",
    "open_store",
    "redact",
]

#: URL schemes of the PostgreSQL store.
POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_url(location: Union[str, os.PathLike]) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a folder path."""
    return isinstance(location, str) and "://" in location


def redact(location: str) -> str:
    """``location`` without the password of its URL, for messages and logs.

    >>> redact("postgresql://app:s3cret@db.local:5432/voices")
    'postgresql://app:***@db.local:5432/voices'
    """
    scheme, sep, rest = location.partition("://")
    if not sep or "@" not in rest:
        return location
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def open_store(location: Union[str, os.PathLike, Store]) -> Store:
    """The store at ``location``: a folder path (SQLite) or a ``postgresql://`` URL; a :class:`Store` is returned
    as it is. Nothing is connected yet (:meth:`Store.check` connects now)."""
    if isinstance(location, Store):
        return location
    if is_url(location):
        scheme = str(location).split("://", 1)[0].lower()
        if scheme not in POSTGRES_SCHEMES:
            raise StoreError(
                f"{redact(str(location))!r}: unknown store URL scheme {scheme!r}; give a folder path or a "
                "postgresql://user:password@host:port/dbname URL"
            )
        from mvector.store.postgres import PostgresStore

        return PostgresStore(str(location))
    if not isinstance(location, (str, os.PathLike)) or not str(location):
        raise StoreError(f"a store location must be a folder path or a postgresql:// URL, got {location!r}")
    from mvector.store.sqlite import SQLiteStore

    return SQLiteStore(location)
