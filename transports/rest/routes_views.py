"""Public views: status, clients, history, health, live events (SSE) and the dashboard."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from fedcore.operations import ClientInfo, FederationOperations, Health, RoundRecord, Status
from transports.rest.bridge import while_connected
from transports.rest.views import error_responses

STATIC_DIR = Path(__file__).parent / "static"
EVENT_POLL_S = 5.0


_EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = error_responses(422)
_EVENTS_RESPONSES[200] = {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                          "description": "a snapshot event, then events as they happen (never ends)"}


def views_router(ops: FederationOperations) -> APIRouter:
    r = APIRouter(tags=["status"])

    @r.get("/status", summary="Global model status")
    def status() -> Status:
        return ops.status()

    @r.get("/clients", summary="Every client and its state")
    def clients() -> list[ClientInfo]:
        return ops.clients()

    @r.get("/history", summary="Per-round history")
    def history() -> list[RoundRecord]:
        return ops.history()

    @r.get("/health", summary="Ready (200) once every configured transport accepts; 503 before",
           responses={503: {"model": Health, "description": "not ready"}})
    def health() -> JSONResponse:
        h = ops.health()
        return JSONResponse(asdict(h), status_code=200 if h.ready else 503)

    @r.get("/events", summary="Live events (server-sent events)", response_class=StreamingResponse,
           responses=_EVENTS_RESPONSES)
    async def events(request: Request, since: int = Query(0, ge=0)) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            # One atomic snapshot and the sequence number it is current at: no event between
            # the two can be lost (a lost round_finished once left the page a round behind).
            snap = await run_in_threadpool(ops.snapshot)
            view = {"status": asdict(snap.status), "clients": [asdict(c) for c in snap.clients],
                    "history": [asdict(h) for h in snap.history]}
            yield f"id: {snap.seq}\nevent: snapshot\ndata: {json.dumps(view)}\n\n"
            seq = max(since, snap.seq)
            while not ops.stopping and not await request.is_disconnected():
                batch = await while_connected(request, lambda alive: ops.events_since(seq, EVENT_POLL_S, alive))
                if not batch:
                    yield ": keep-alive\n\n"
                for e in batch:
                    seq = e.seq
                    yield f"id: {e.seq}\nevent: {e.type}\ndata: {json.dumps(asdict(e.data))}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return r


def mount_dashboard(app: FastAPI) -> None:
    index = STATIC_DIR / "index.html"
    if not index.exists():
        return
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def dashboard() -> FileResponse:
        return FileResponse(index)

    app.add_api_route("/", dashboard, methods=["GET"], include_in_schema=False)
