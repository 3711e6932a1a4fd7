"""Errors of the HTTP service: one exception type that becomes a JSON body ``{"code", "message", "field"}``.

Every error the service sends has a stable machine-readable ``code`` (listed in :data:`ERROR_CODES`), a
``message`` for people that names the field or parameter at fault, and ``field`` (or ``null``).

>>> err = ServiceError(413, "upload_too_large", "field 'audio': 12.0 MB is over the 10.0 MB limit", field="audio")
>>> err.status, err.body()
(413, {'code': 'upload_too_large', 'message': "field 'audio': 12.0 MB is over the 10.0 MB limit", 'field': 'audio'})
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["ServiceError", "ERROR_CODES", "error_body", "unavailable", "RETRY_STORE_S"]

#: Seconds a client is told to wait (``Retry-After``) when the shared database cannot be reached.
RETRY_STORE_S = 2

#: code -> (HTTP status, meaning). The codes are part of the API: clients may switch on them.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the request cannot be parsed (e.g. a damaged multipart body)"),
    "missing_field": (400, "a required field or upload is missing"),
    "invalid_parameter": (400, "a parameter has a wrong type or value"),
    "invalid_name": (
        400,
        "a speaker name is empty, too long, holds '/', '\\\\', '..', control, invisible or bidirectional characters, "
        "or mixes look-alike scripts (e.g. Latin with Cyrillic); names are NFKC-normalised",
    ),
    "bad_audio": (400, "an upload cannot be decoded as audio"),
    "audio_too_short": (400, "a recording is shorter than the server's minimum duration"),
    "unauthorized": (401, "no API key, or an unknown or revoked one (send 'Authorization: Bearer KEY')"),
    "forbidden": (403, "the key's scope does not allow this route"),
    "not_found": (404, "no such route"),
    "unknown_speaker": (404, "the speaker is not enrolled"),
    "unknown_key": (404, "no API key with this id"),
    "method_not_allowed": (405, "the route does not accept this HTTP method"),
    "request_timeout": (408, "the request body stalled longer than the server's body timeout"),
    "speaker_exists": (409, "a speaker with this name is already enrolled (add recordings to it instead)"),
    "idempotency_key_reused": (422, "the Idempotency-Key was already used with another request (method, path or body)"),
    "key_in_use": (409, "a key cannot revoke itself over HTTP (use another admin key or mvector keys revoke)"),
    "upload_too_large": (413, "an upload or the request body is over the size limit"),
    "audio_too_long": (413, "a recording is longer than the server's duration limit"),
    "too_many_files": (413, "more recordings in one request than the server accepts"),
    "rate_limited": (429, "too many refused requests from this key and client; retry after the Retry-After seconds"),
    "model_loading": (503, "the model is still loading; retry after the Retry-After seconds"),
    "model_failed": (503, "the model could not be loaded; see the server log"),
    "overloaded": (503, "the server is at a limit (requests, queue or audio memory); retry after the Retry-After s"),
    "shutting_down": (503, "the server is stopping"),
    "store_unavailable": (503, "the shared database (PostgreSQL) cannot be reached now; retry after Retry-After s"),
    "unknown_gallery": (404, "no gallery of this name (enrol a speaker into it to create it)"),
    "internal_error": (500, "an unexpected server error (logged on the server; no details are sent)"),
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, object]:
    """The JSON body of an error response.

    >>> error_body("unknown_speaker", "unknown speaker 'bob'", "name")["field"]
    'name'
    """
    return {"code": code, "message": message, "field": field}


class ServiceError(Exception):
    """An error answered as JSON with ``status``; ``code`` must be one of :data:`ERROR_CODES`.

    >>> ServiceError(404, "unknown_speaker", "unknown speaker 'x'", field="name").status
    404
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown service error code {code!r}")
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        """The JSON body: ``{"code", "message", "field"}``."""
        return error_body(self.code, self.message, self.field)


def unavailable(err: Exception) -> ServiceError:
    """The 503 ``store_unavailable`` answer for a :class:`~mvector.errors.StoreUnavailableError` (its message names
    the database without its password).

    >>> unavailable(RuntimeError("postgresql://app:***@db/x: cannot connect")).status
    503
    """
    return ServiceError(503, "store_unavailable", str(err), headers={"Retry-After": str(RETRY_STORE_S)})
