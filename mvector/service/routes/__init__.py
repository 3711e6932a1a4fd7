"""The service's routes, one ``APIRouter`` per resource; :func:`mvector.service.app.create_app` adds the pages
(:func:`mvector.service.routes.pages.add_pages`), then the API routers in the order of :data:`ROUTERS` (which is
the order of ``/openapi.json``'s paths).

A new route goes in the module of its resource (or a new module added to :data:`ROUTERS`); it reaches the running
service through :func:`mvector.service.state.service_state` and its key through
:func:`mvector.service.auth.require`.

>>> [router.prefix for router in ROUTERS]
['', '', '', '']
"""

from __future__ import annotations

from mvector.service.routes import health, keys, speakers, verification

__all__ = ["ROUTERS"]

#: The API routers, in the order the app includes them.
ROUTERS = (health.router, verification.router, speakers.router, keys.router)
