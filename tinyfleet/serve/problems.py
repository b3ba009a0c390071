"""RFC 9457 problem details (application/problem+json, UTF-8) for every error the server returns."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from registry.exceptions import (
    ReadOnlyQueryError,
    RegistryError,
    RegistryInputError,
    StoreError,
    TDValidationError,
    ThingConflictError,
    UnknownEntityError,
    ValidationFailedError,
)

PROBLEM_JSON = "application/problem+json"
TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
          409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type", 500: "Internal Server Error",
          501: "Not Implemented", 503: "Service Unavailable"}


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON

    def render(self, content: Any) -> bytes:
        import json

        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def problem(status: int, detail: str, *, instance: str | None = None, headers: dict[str, str] | None = None,
            **extensions: Any) -> ProblemResponse:
    """A problem+json response; `type` is omitted (it defaults to about:blank, as Discovery suggests)."""
    body: dict[str, Any] = {"title": TITLES.get(status, "Error"), "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return ProblemResponse(body, status_code=status, headers={**(headers or {}),
                                                             "Content-Type": f"{PROBLEM_JSON}; charset=utf-8"})


class HTTPProblem(Exception):
    """Raised by handlers for a problem that is not a registry error (bad header, too large, no token)."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extensions = extensions


def from_registry_error(exc: RegistryError, instance: str) -> ProblemResponse:
    """The HTTP status and body for a registry error (same one-line message as the CLI prints)."""
    detail = str(exc).splitlines()[0]
    if isinstance(exc, TDValidationError):
        return problem(400, f"{exc.source}: the Thing Description did not pass validation", instance=instance,
                       validationErrors=exc.errors)
    if isinstance(exc, ValidationFailedError):
        return problem(400, detail, instance=instance,
                       validationErrors=[{"field": "(shacl)", "description": v} for v in exc.violations])
    if isinstance(exc, UnknownEntityError):
        return problem(404, detail, instance=instance)
    if isinstance(exc, ThingConflictError):
        return problem(409, detail, instance=instance)
    if isinstance(exc, (ReadOnlyQueryError, RegistryInputError)):
        return problem(400, detail, instance=instance)
    if isinstance(exc, StoreError):
        return problem(503, detail, instance=instance)
    return problem(500, detail, instance=instance)
