"""Round control (admin token): autorun, stop, step, ask a client to switch transport."""

from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Path

from fedcore.operations import ControlResult, FederationOperations
from transports.rest.deps import CallerDep
from transports.rest.views import ERROR_RESPONSES

MAX_ROUNDS = 1_000_000


def control_router(ops: FederationOperations, transports: list[str]) -> APIRouter:
    r = APIRouter(tags=["control"], responses=ERROR_RESPONSES)
    Transport = Enum("Transport", {name: name for name in transports}, type=str)  # type: ignore[misc]

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
    def switch_transport(client_id: Annotated[str, Path(max_length=64)], transport: Transport,  # type: ignore[valid-type]
                         caller: CallerDep) -> ControlResult:
        return ops.request_transport(client_id, transport.value, caller=caller)

    return r
