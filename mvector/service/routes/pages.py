"""The web page (``/``), the API reference page (``/docs``, rendering ``/openapi.json`` without a CDN) and their
static files (``/static``); none needs a key.

>>> sorted(route.path for route in router.routes)
['/', '/docs']
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from mvector.service.guard import PAGE_CSP

__all__ = ["router", "STATIC_DIR", "add_pages"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
_PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The web page: record or upload, verify, identify, enrol."""
    return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


@router.get("/docs", include_in_schema=False)
async def docs_page() -> FileResponse:
    """The API reference: a page of this package rendering /openapi.json (no CDN, works offline)."""
    return FileResponse(STATIC_DIR / "docs.html", headers=_PAGE_HEADERS)


def add_pages(app: FastAPI) -> None:
    """Add the pages to ``app``, and their files under ``/static`` (a mount, which a router cannot carry)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
