"""FastAPI app exposing a Federation with the REST paper's URIs (its Table 2), and its server.

Parameter bodies are the wire codec's bytes (application/octet-stream), never JSON arrays.
Blocking federation calls run in FastAPI's thread pool (plain ``def`` routes) so one client's
long-poll never stalls the event loop.
"""

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from fedcore import __version__
from fedcore.config import Settings
from fedcore.constants import (
    DEFAULT_LONG_POLL_S,
    HEADER_CLIENT_ID,
    HEADER_METRICS,
    HEADER_ROUND,
    MAX_CONCURRENT_UPDATES,
    PARAMS_MEDIA_TYPE,
)
from fedcore.errors import AuthError, FedcoreError, PayloadError, PayloadTooLargeError
from fedcore.federation import Federation
from fedcore.logger import get_logger
from fedcore.states import Action, ClientState
from fedcore.transport import ServerTransport
from transports.rest.errors import status_for
from transports.rest.routes_device import device_router, partition_shards

log = get_logger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
MAX_LONG_POLL_S = 30.0
LONG_POLL_SLICE_S = 1.0


class RegisterRequest(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    num_samples: int = Field(0, ge=0)
    client_id: str | None = None
    token: str | None = None
    transport: str = "rest"


class RegisterResponse(BaseModel):
    client_id: str
    token: str
    round: int


class SignalRequest(BaseModel):
    state: ClientState
    wait_s: float = Field(0.0, ge=0.0, le=MAX_LONG_POLL_S)


class InstructionResponse(BaseModel):
    action: str
    round: int
    config: dict[str, Any] = {}


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def create_app(federation: Federation, settings: Settings | None = None) -> FastAPI:
    """The REST API (and dashboard, when its static files are present) over ``federation``."""
    settings = settings or Settings()
    app = FastAPI(
        title="fedcore",
        version=__version__,
        description="Dynamic federated learning over REST (URIs of the REST paper, Table 2).",
    )
    app.state.federation = federation
    update_slots = asyncio.Semaphore(MAX_CONCURRENT_UPDATES)

    @app.exception_handler(FedcoreError)
    async def _fedcore_error(_: Request, exc: FedcoreError) -> JSONResponse:
        code = status_for(exc)
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=code)

    @app.exception_handler(ValueError)
    async def _value_error(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "error": "ValueError"}, status_code=400)

    def client_auth(
        authorization: Annotated[str | None, Header()] = None,
        x_fedcore_client: Annotated[str | None, Header()] = None,
    ) -> tuple[str, str | None]:
        if not x_fedcore_client:
            raise AuthError(f"missing {HEADER_CLIENT_ID} header")
        return x_fedcore_client, _bearer(authorization)

    def admin_auth(authorization: Annotated[str | None, Header()] = None) -> None:
        token = _bearer(authorization)
        try:
            federation.check_admin(token)
        except AuthError as exc:
            code = 401 if token is None else 403
            raise HTTPException(status_code=code, detail=str(exc)) from exc

    Client = Annotated[tuple[str, str | None], Depends(client_auth)]

    # ----------------------------------------------------------------- the paper's URIs
    @app.post("/client", response_model=RegisterResponse, tags=["client"], summary="Register a client")
    def register(req: RegisterRequest) -> RegisterResponse:
        reg = federation.register(
            req.name, num_samples=req.num_samples, transport=req.transport, client_id=req.client_id, token=req.token
        )
        return RegisterResponse(client_id=reg.client_id, token=reg.token, round=reg.round)

    def _params(client: tuple[str, str | None]) -> Response:
        version, payload = federation.global_payload(*client)
        return Response(payload, media_type=PARAMS_MEDIA_TYPE, headers={HEADER_ROUND: str(version)})

    @app.get("/client", tags=["client"], summary="Initial (current global) parameters, compressed",
             response_class=Response, responses={200: {"content": {PARAMS_MEDIA_TYPE: {}}}})
    def initial_parameters(client: Client) -> Response:
        return _params(client)

    @app.post("/client/autorun/{rounds}", tags=["control"], summary="Autorun for N rounds",
              dependencies=[Depends(admin_auth)])
    def autorun(rounds: int) -> dict[str, Any]:
        target = federation.start_autorun(rounds)
        return {"autorun_target": target, "status": federation.status()}

    @app.delete("/client/autorun", tags=["control"], summary="Stop autorun", dependencies=[Depends(admin_auth)])
    def stop_autorun() -> dict[str, Any]:
        federation.stop_autorun()
        return {"status": federation.status()}

    @app.post("/client/signal", response_model=InstructionResponse, tags=["client"],
              summary="Report the client's state; long-poll for what to do next")
    async def signal(req: SignalRequest, request: Request, client: Client) -> InstructionResponse:
        # The long-poll is cut into slices so a client that went away (killed) stops counting
        # as alive at once instead of being kept fresh by its own abandoned request.
        end = time.monotonic() + req.wait_s
        while True:
            part = min(max(end - time.monotonic(), 0.0), LONG_POLL_SLICE_S)
            instr = await run_in_threadpool(federation.signal, *client, req.state, wait_s=part)
            if instr.action is not Action.WAIT or time.monotonic() >= end or await request.is_disconnected():
                return InstructionResponse(action=instr.action.value, round=instr.round, config=instr.config)

    @app.post("/client/{client_id}/transport/{transport}", tags=["control"],
              summary="Ask a client to switch transport before its next round", dependencies=[Depends(admin_auth)])
    def switch_transport(client_id: str, transport: str) -> dict[str, str]:
        if transport not in settings.transports:
            raise HTTPException(status_code=400, detail=f"this server serves {settings.transport}, not {transport!r}")
        federation.request_transport(client_id, transport)
        return {"client_id": client_id, "transport": transport}

    @app.delete("/client/{client_id}", tags=["client"], summary="Disconnect a client (itself, or the admin)")
    def disconnect(
        client_id: str,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, str]:
        token = _bearer(authorization)
        is_admin = federation.admin_token is not None and token == federation.admin_token
        federation.disconnect(client_id, token, admin=is_admin)
        return {"client_id": client_id, "state": ClientState.LEFT.value}

    @app.get("/transmitter", tags=["client"], summary="Updated global parameters, compressed",
             response_class=Response, responses={200: {"content": {PARAMS_MEDIA_TYPE: {}}}})
    def global_parameters(client: Client) -> Response:
        return _params(client)

    @app.post("/transmitter/{name}", tags=["client"], summary="A client's local parameters (binary body)",
              openapi_extra={"requestBody": {"content": {PARAMS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}, "required": True}})
    async def local_parameters(
        name: str,
        request: Request,
        client: Client,
        x_fedcore_round: Annotated[int, Header()],
        x_fedcore_samples: Annotated[int, Header()],
        x_fedcore_metrics: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        limit = federation.max_payload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"body of {declared} bytes is over the {limit}-byte limit")
        await run_in_threadpool(federation.precheck_update, *client, x_fedcore_round)  # before any byte
        async with update_slots:  # at most MAX_CONCURRENT_UPDATES bodies in memory, whatever N is
            return await _receive_update(name, request, client, x_fedcore_round, x_fedcore_samples,
                                         x_fedcore_metrics, limit)

    async def _receive_update(name: str, request: Request, client: tuple[str, str | None], round_number: int,
                              samples: int, metrics_header: str | None, limit: int) -> dict[str, Any]:
        body = bytearray()  # grown in place: one copy of the payload, handed to the decoder as is
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise PayloadTooLargeError(f"body is over the {limit}-byte limit")
            body += chunk
        try:
            metrics = json.loads(metrics_header) if metrics_header else {}
            if not isinstance(metrics, dict):
                raise ValueError("metrics must be a JSON object")
        except ValueError as exc:
            raise PayloadError(f"bad {HEADER_METRICS} header: {exc}") from exc
        if await run_in_threadpool(federation.client_name, client[0]) != name:
            raise HTTPException(status_code=403, detail="URI name does not match the client's registered name")
        await run_in_threadpool(federation.submit_update, *client, round_number, body, samples, metrics)
        return {"accepted": True, "round": round_number, "bytes": len(body)}

    # ----------------------------------------------------------------- service extras
    @app.post("/round/step", tags=["control"], summary="Run one round now (manual control)",
              dependencies=[Depends(admin_auth)])
    def step() -> dict[str, Any]:
        return {"round": federation.step(), "status": federation.status()}

    @app.get("/status", tags=["status"], summary="Global model status")
    def status() -> dict[str, Any]:
        return federation.status()

    @app.get("/clients", tags=["status"], summary="Every client and its state")
    def clients() -> list[dict[str, Any]]:
        return federation.clients()

    @app.get("/history", tags=["status"], summary="Per-round history")
    def history() -> list[dict[str, Any]]:
        return federation.get_history()

    @app.get("/health", tags=["status"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "round": federation.round, "version": __version__}

    @app.get("/events", tags=["status"], summary="Live events (server-sent events)")
    async def events(request: Request, since: int = 0) -> StreamingResponse:
        async def stream():
            seq = since
            snapshot = {"status": federation.status(), "clients": federation.clients(),
                        "history": federation.get_history()}
            yield f"event: snapshot\ndata: {json.dumps(snapshot)}\n\n"
            seq = max(seq, federation.event_seq)
            while not federation.stopped and not await request.is_disconnected():
                batch = await run_in_threadpool(federation.events_since, seq, 5.0)
                if not batch:
                    yield ": keep-alive\n\n"
                for e in batch:
                    seq = e["seq"]
                    yield f"id: {seq}\nevent: {e['type']}\ndata: {json.dumps(e['data'])}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    app.include_router(device_router(partition_shards(settings)))

    index = STATIC_DIR / "index.html"
    if index.exists():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        def dashboard() -> FileResponse:
            return FileResponse(index)

    return app


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the host process owns signals
        pass


class RestServerTransport(ServerTransport):
    """Runs the app under uvicorn in a background thread."""

    name = "rest"

    def __init__(self, federation: Federation, settings: Settings) -> None:
        super().__init__(federation, settings)
        self.app = create_app(federation, settings)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        s = self.settings
        config = uvicorn.Config(
            self.app,
            host=s.host,
            port=s.rest_port,
            log_level="warning",
            ssl_certfile=str(s.tls_cert) if s.tls_cert else None,
            ssl_keyfile=str(s.tls_key) if s.tls_key else None,
            timeout_keep_alive=int(DEFAULT_LONG_POLL_S) + 5,
        )
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fedcore-rest", daemon=True)
        self._thread.start()
        end = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeError(f"REST server did not start on {s.host}:{s.rest_port}")
            time.sleep(0.02)
        log.info("REST transport listening on %s", self.url)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.servers, "server not started"
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://{self.settings.host}:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server = self._thread = None


__all__ = ["RestServerTransport", "create_app"]
