"""The FastAPI app: the routers over one FederationOperations, and the one error mapping."""
from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import Scope

from fedcore import __version__
from fedcore.errors import ErrorKind, FedcoreError, kind_of
from fedcore.logger import get_logger
from fedcore.operations import FederationOperations
from transports.rest.docs import mount_offline_docs
from transports.rest.errors import KIND_FOR_STATUS, STATUS_FOR_KIND
from transports.rest.routes_client import client_router
from transports.rest.routes_control import control_router
from transports.rest.routes_secagg import secagg_router
from transports.rest.routes_split import split_router
from transports.rest.routes_views import mount_dashboard, views_router
from transports.rest.views import error_responses

log = get_logger(__name__)
MAX_SPLIT_MESSAGE_BYTES = 64 * 1024**2  # the transport's own read bound; the core's limit is checked too


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this request's path (the Allow header of a 405)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def create_app(ops: FederationOperations, transports: Sequence[str] = ("rest",),
               extra_routers: Sequence[APIRouter] = (), open_control: bool = False) -> FastAPI:
    """The REST API (the REST paper's URIs, Table 2) and the dashboard over ``ops``.
    ``transports`` are the names this server serves (valid switch targets in the schema);
    ``open_control``: no admin token is configured, so round control declares no security."""
    app = FastAPI(
        title="fedcore",
        version=__version__,
        description="Dynamic federated learning over REST (URIs of the REST paper, Table 2). Parameter bodies "
                    "are fedcore's wire format (application/octet-stream); see the README's 'Wire format'.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.ops = ops

    # FedcoreError and ValueError: answered here and the connection stays open (a handler for
    # Exception itself would run in Starlette's outer middleware, which re-raises and drops the
    # keep-alive connection).
    async def _error(_: Request, exc: Exception) -> JSONResponse:
        kind = kind_of(exc)
        if kind is ErrorKind.INTERNAL:
            log.error("REST handler failed", exc_info=exc)
        return JSONResponse({"detail": str(exc) or type(exc).__name__, "error": kind.value},
                            status_code=STATUS_FOR_KIND[kind])

    app.add_exception_handler(FedcoreError, _error)
    app.add_exception_handler(ValueError, _error)

    # Starlette's own answers (no route 404, 405, a body that is not JSON 400) in the same shape.
    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        kind = KIND_FOR_STATUS.get(exc.status_code, ErrorKind.INVALID if exc.status_code < 500 else ErrorKind.INTERNAL)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return JSONResponse({"detail": str(exc.detail), "error": kind.value}, status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}", "error": "invalid"},
                            status_code=422)

    # Control before client routes: DELETE /client/autorun must not match DELETE /client/{client_id}.
    app.include_router(control_router(ops, list(transports), open_control))
    app.include_router(client_router(ops))
    app.include_router(views_router(ops))
    app.include_router(split_router(ops, MAX_SPLIT_MESSAGE_BYTES))
    app.include_router(secagg_router(ops))
    for router in extra_routers:  # e.g. the browser device's: its errors are the same bodies
        app.include_router(router, responses=error_responses(400, 404, 422))
    mount_offline_docs(app)
    mount_dashboard(app)
    return app
