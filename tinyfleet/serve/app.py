"""The Starlette application: TDD routes, dashboard routes, problem+json errors, security headers."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.exceptions import RegistryError
from tinyfleet.serve import dashboard, tdd
from tinyfleet.serve.auth import TokenFileError
from tinyfleet.serve.problems import HTTPProblem, from_registry_error, problem
from tinyfleet.serve.tdd import ServeState

log = logging.getLogger(__name__)

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Everything comes from this server; the dashboard's one script and stylesheet are static files.
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                 b"frame-ancestors 'none'"),
]


class SecurityHeaders:
    """Add the headers above to every response (pure ASGI, so SSE streams are not buffered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _instance(request: Request) -> str:
    return request.url.path


async def _registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    return from_registry_error(exc, _instance(request))


async def _http_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem)
    return problem(exc.status, exc.detail, instance=_instance(request), headers=exc.headers, **exc.extensions)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {404: f"no resource at {request.url.path[:200]}",
              405: f"{request.method} is not supported on {request.url.path[:200]}"}.get(exc.status_code, exc.detail)
    return problem(exc.status_code, str(detail), instance=_instance(request), headers=dict(exc.headers or {}))


async def _token_file(request: Request, exc: Exception) -> Response:
    return problem(500, f"token file: {exc}", instance=_instance(request))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return problem(500, "internal error (logged on the server)", instance=_instance(request))


def create_app(state: ServeState, *, cors_origins: Sequence[str] = ()) -> Starlette:
    """The ASGI app. CORS is off unless `cors_origins` names the origins allowed to call the API."""
    middleware = [Middleware(SecurityHeaders)]
    if cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_credentials=False,
                                     allow_methods=["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"],
                                     allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                                     expose_headers=["Link", "Location"]))
    app = Starlette(routes=[*tdd.ROUTES, *dashboard.ROUTES], middleware=middleware,
                    exception_handlers={RegistryError: _registry_error, HTTPProblem: _http_problem,
                                        HTTPException: _http_exception, TokenFileError: _token_file,
                                        Exception: _server_error})
    app.state.serve = state
    return app
