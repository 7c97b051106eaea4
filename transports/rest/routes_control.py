"""Round control (admin token): autorun, stop, step, ask a client to switch transport.

No ``from __future__ import annotations``: FastAPI must see the route-local types as objects."""
from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Depends, Path

from fedcore.operations import Caller, ControlResult, FederationOperations
from transports.rest.deps import MAX_CLIENT_ID_CHARS, admin_caller, open_caller
from transports.rest.views import ERROR_RESPONSES

MAX_ROUNDS = 1_000_000


def control_router(ops: FederationOperations, transports: list[str], open_control: bool = False) -> APIRouter:
    """``open_control``: the server has no admin token (--no-auth), so the schema declares no
    security on these operations (the core lets anyone control rounds)."""
    r = APIRouter(tags=["control"], responses=ERROR_RESPONSES)
    Transport = Enum("Transport", {name: name for name in transports}, type=str)  # type: ignore[misc]
    CallerDep = Annotated[Caller, Depends(open_caller if open_control else admin_caller)]

    @r.post("/client/autorun/{rounds}", summary="Autorun for N rounds")
    def autorun(rounds: Annotated[int, Path(ge=1, le=MAX_ROUNDS)], caller: CallerDep) -> ControlResult:
        return ops.start_autorun(rounds, caller=caller)

    @r.delete("/client/autorun", summary="Stop autorun (an open round still completes)")
    def stop_autorun(caller: CallerDep) -> ControlResult:
        return ops.stop_autorun(caller=caller)

    @r.post("/round/step", summary="Run one round now (manual control)")
    def step(caller: CallerDep) -> ControlResult:
        return ops.step(caller=caller)

    @r.post("/client/{client_id}/transport/{transport}",
            summary="Ask a client to switch transport before its next round")
    def switch_transport(client_id: Annotated[str, Path(max_length=MAX_CLIENT_ID_CHARS)],
                         transport: Transport,
                         caller: CallerDep) -> ControlResult:
        return ops.request_transport(client_id, transport.value, caller=caller)

    return r

