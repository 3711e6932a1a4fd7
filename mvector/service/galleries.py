"""Named galleries over HTTP: the one ``gallery`` parameter of every speaker route, who may use which gallery, and
the ``among`` list that restricts an identification.

A key limited to some galleries (``mvector keys create --galleries house``) gets 403 ``forbidden`` for any other
gallery, the default one included, before anything is read or written; an admin key reaches every gallery. A read
of a gallery that does not exist is 404 ``unknown_gallery`` (a typo never creates an empty gallery); an enrolment
creates its gallery.

>>> from mvector.service.keys import KeyInfo
>>> key = KeyInfo("0123456789ab", "app", "write", 0.0, None, None, ("house",))
>>> allowed_gallery(key, "house")
'house'
>>> import re
>>> [bool(re.match(GALLERY_PATTERN, g)) for g in ("house_2", "House", "-x")]
[True, False, False]
>>> allowed_gallery(key, "office")
Traceback (most recent call last):
...
mvector.service.errors.ServiceError: key 0123456789ab may use only the galleries: house (asked for 'office')
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import anyio
from fastapi import Depends, Query, Request

from mvector.errors import StoreError
from mvector.service.auth import audit
from mvector.service.errors import ServiceError
from mvector.service.guard import KEY_STATE
from mvector.service.state import service_state
from mvector.store import DEFAULT_GALLERY, check_gallery

__all__ = [
    "GALLERY_HELP",
    "GALLERY_PATTERN",
    "allowed_gallery",
    "among_names",
    "among_param",
    "gallery_param",
    "known_gallery",
    "use_gallery",
]

#: The gallery name rule (:func:`mvector.store.check_gallery`) as stated in the OpenAPI schema.
GALLERY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
GALLERY_HELP = (
    "the named gallery to use (1-64 of a-z 0-9 _ -; default 'default'); a key limited to other galleries gets 403"
)


def gallery_param() -> Any:
    """The ``gallery`` query parameter (documented in the OpenAPI schema)."""
    return Query(DEFAULT_GALLERY, min_length=1, max_length=64, pattern=GALLERY_PATTERN, description=GALLERY_HELP)


def among_param() -> Any:
    """The optional ``among`` query parameter of ``/v1/identify`` (repeat it: ``?among=alice&among=bob``)."""
    return Query(
        None,
        description="decide only among these enrolled speakers of the gallery (repeat the parameter for each name)",
    )


def allowed_gallery(key: Any, gallery: str) -> str:
    """``gallery`` checked as a name (400 ``invalid_parameter``) and against the key's galleries (403
    ``forbidden``)."""
    try:
        gallery = check_gallery(gallery)
    except StoreError as err:
        raise ServiceError(400, "invalid_parameter", f"parameter 'gallery': {err}", "gallery") from None
    if not key.may_use(gallery):
        raise ServiceError(
            403,
            "forbidden",
            f"key {key.key_id} may use only the galleries: {', '.join(key.galleries)} (asked for {gallery!r})",
            "gallery",
        )
    return gallery


def known_gallery(gallery: str, names: Callable[[], list[str]], seen: set[str]) -> None:
    """404 ``unknown_gallery`` unless ``gallery`` exists; ``names()`` lists the store's galleries (asked only for a
    gallery not in ``seen``, the galleries this process knows exist).

    >>> seen = set()
    >>> known_gallery("house", lambda: ["default", "house"], seen); sorted(seen)
    ['default', 'house']
    """
    if gallery in seen:
        return
    seen.update(names())
    if gallery not in seen:
        raise ServiceError(404, "unknown_gallery", f"no gallery {gallery!r} (enrol a speaker into it to create it)",
                           "gallery")


def among_names(among: Optional[list[str]]) -> Optional[list[str]]:
    """The ``among`` names as given (None: no restriction); an empty list is a 400.

    >>> among_names(["alice", "bob"]), among_names(None)
    (['alice', 'bob'], None)
    """
    if among is None:
        return None
    if not among or any(not a.strip() for a in among):
        raise ServiceError(400, "invalid_parameter", "parameter 'among': give one or more enrolled names", "among")
    return list(among)


_GALLERY_QUERY = gallery_param()


def use_gallery(action: str | None = None, must_exist: bool = True) -> Any:
    """A route dependency yielding the ``gallery`` the request's key may use (400 / 403; with ``must_exist``, 404
    ``unknown_gallery`` for a gallery that does not exist). With ``action`` (a write route), a refusal is audited
    as that action on the path's ``name``. Declare it after the route's key dependency."""

    async def dependency(request: Request, gallery: str = _GALLERY_QUERY) -> str:
        key = getattr(request.state, KEY_STATE, None)
        try:
            if key is None:  # only an app run without its guard: the key dependency answers 401
                return check_gallery(gallery)
            name = request.state.gallery = allowed_gallery(key, gallery)
            if must_exist:
                state = service_state(request)
                predictor = await state.ready_predictor()
                seen = state.galleries
                await anyio.to_thread.run_sync(known_gallery, name, predictor.store.gallery_names, seen)
            return name
        except ServiceError as err:
            if action is not None and err.status in (403, 404):
                await audit(request, key, action, request.path_params.get("name"), err.status, "gallery")
            raise

    return Depends(dependency)
