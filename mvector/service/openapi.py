"""The OpenAPI description's additions: the rules of path parameters the server checks, written into the schema.

>>> from fastapi import FastAPI
>>> app = FastAPI()
>>> @app.delete("/v1/keys/{key_id}")
... async def revoke(key_id: str) -> None: ...
>>> app.openapi = stated_openapi(app)
>>> app.openapi()["paths"]["/v1/keys/{key_id}"]["delete"]["parameters"][0]["description"]
'the 12-hex-digit id of a key (as listed), or the whole key'
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import FastAPI

__all__ = ["PATH_RULES", "stated_openapi"]


#: What the OpenAPI schema states about path parameters (the server checks them: ``speaker_ops.checked_name``).
PATH_RULES: dict[str, dict[str, Any]] = {
    "name": {
        "pattern": r"^[^/\\\u0000-\u001f\u007f-\u009f]+$",
        "description": "a speaker name: 1..100 characters once surrounding white space is trimmed; no '/', "
        "'\\', control characters; not '.' or '..'; invisible, bidi-control and look-alike names are refused "
        "(400 invalid_name)",
    },
    "key_id": {"description": "the 12-hex-digit id of a key (as listed), or the whole key"},
}


def stated_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with the rules of :data:`PATH_RULES` written into every path parameter."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            for ops in schema.get("paths", {}).values():
                for op in ops.values():
                    for param in op.get("parameters", []):
                        rule = PATH_RULES.get(param.get("name")) if param.get("in") == "path" else None
                        if rule:
                            param.setdefault("schema", {}).update({k: v for k, v in rule.items() if k != "description"})
                            param["description"] = rule["description"]
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
