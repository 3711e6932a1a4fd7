"""The service's routers (mvector/service/routes/): every API route lives in the router of its resource, a path's
405 names the methods of all routers, and a router added to the app reaches the key and the state the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the HTTP service needs the serve extra")
httpx = pytest.importorskip("httpx", reason="the service tests talk HTTP with httpx (in the test extra)")

import torch  # noqa: E402
from fastapi import APIRouter, Depends, Request  # noqa: E402
from service_helpers import running  # noqa: E402

from mvector.demo import tiny_checkpoint  # noqa: E402
from mvector.service.app import create_app  # noqa: E402
from mvector.service.auth import require  # noqa: E402
from mvector.service.keys import KeyInfo, KeyStore  # noqa: E402
from mvector.service.routes import ROUTERS, health, keys, speakers, verification  # noqa: E402
from mvector.service.settings import ServiceConfig  # noqa: E402
from mvector.service.state import service_state  # noqa: E402

READ = Depends(require("read"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def _app(model_dir: Path, db: Path):
    return create_app(ServiceConfig(model_path=str(model_dir), audio_db_path=str(db), threads=torch.get_num_threads()))


def test_each_api_route_is_in_the_router_of_its_resource(model_dir, tmp_path):
    spec = _app(model_dir, tmp_path).openapi()

    def routes(router) -> set[tuple[str, str]]:
        return {(route.path, method) for route in router.routes for method in route.methods}

    served = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    assert set().union(*map(routes, ROUTERS)) == served  # every documented route comes from one of the routers
    assert routes(health.router) == {("/health", "GET"), ("/v1/model", "GET")}
    assert {p for p, _ in routes(verification.router)} == {"/v1/embed", "/v1/verify", "/v1/identify"}
    assert {p for p, _ in routes(speakers.router)} == {
        "/v1/speakers", "/v1/speakers/{name}", "/v1/speakers/{name}/verify", "/v1/speakers/{name}/recordings",
    }  # fmt: skip
    assert {p for p, _ in routes(keys.router)} == {"/v1/keys", "/v1/keys/{key_id}", "/v1/audit"}


def test_405_names_the_methods_of_every_router_and_a_new_router_uses_the_same_key_and_state(model_dir, tmp_path):
    with KeyStore(tmp_path) as store:
        _, read = store.create("read")
    app = _app(model_dir, tmp_path)
    extra = APIRouter()  # what a later resource (e.g. named galleries) adds: its key and the state, as the others

    @extra.get("/v1/extra")
    async def extra_route(request: Request, key: KeyInfo = READ) -> dict:
        return {"scope": key.scope, "max_files": service_state(request).config.max_files}

    app.include_router(extra)
    with running(app) as (_, url), httpx.Client(base_url=url, timeout=30) as client:
        for path, allowed in (("/v1/speakers", "GET, HEAD, POST"), ("/v1/speakers/bob", "DELETE, GET, HEAD")):
            answer = client.put(path, headers={"Authorization": f"Bearer {read}"})
            assert answer.status_code == 405 and answer.headers["Allow"] == allowed, answer.text
            assert answer.json()["message"].endswith(f"allowed: {allowed}")
        assert client.get("/v1/extra").status_code == 401  # the guard covers a new router's /v1 routes too
        answer = client.get("/v1/extra", headers={"Authorization": f"Bearer {read}"})
        assert answer.json() == {"scope": "read", "max_files": 10}
