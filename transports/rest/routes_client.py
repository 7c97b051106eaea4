"""The client URIs of the REST paper (its Table 2): register, parameters, signal, disconnect."""
from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import Response

from fedcore.constants import HEADER_METRICS, HEADER_ROUND, PARAMS_MEDIA_TYPE
from fedcore.operations import (
    ControlResult,
    EvaluationReceipt,
    EvaluationReport,
    FederationOperations,
    Instruction,
    Registration,
)
from fedcore.registry import MAX_NAME_CHARS
from transports.rest.bridge import receive_update, while_connected
from transports.rest.deps import (
    MAX_CLIENT_ID_CHARS,
    OPTIONAL_AUTH,
    BearerCallerDep,
    ClientCallerDep,
    OptionalCallerDep,
)
from transports.rest.schemas import (
    METRICS_HEADER_SCHEMA,
    EvaluationRequest,
    RegisterRequest,
    SignalRequest,
    UpdateAccepted,
)
from transports.rest.views import ERROR_RESPONSES, json_header, parse_metrics

_PARAMS: dict[int | str, dict[str, Any]] = {200: {"content": {PARAMS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                 "description": "the wire format's bytes",
                 "headers": {HEADER_ROUND: {"schema": {"type": "integer", "minimum": 0},
                                            "description": "the round the parameters complete"}}}}
_BINARY_BODY = {"requestBody": {"required": True, "content": {
    PARAMS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary", "minLength": 1}}}}}
# Header size as the server reads it; a body of MAX_METRICS short names fits with room to spare.
MAX_METRICS_HEADER_CHARS = 8192
_METRICS_HEADER = json_header(HEADER_METRICS, METRICS_HEADER_SCHEMA,
                              f"the client's metrics of the round (JSON, at most {MAX_METRICS_HEADER_CHARS} characters)")


def client_router(ops: FederationOperations, transport_name: str = "rest") -> APIRouter:
    r = APIRouter(tags=["client"], responses=ERROR_RESPONSES)

    @r.post("/client", summary="Register a client (or resume with client_id + token)", openapi_extra=OPTIONAL_AUTH)
    def register(req: RegisterRequest, caller: OptionalCallerDep) -> Registration:
        who = caller
        if req.client_id is not None:
            who = replace(caller, token=req.token or caller.token, client_id=req.client_id)
        return ops.register(who, req.name, req.num_samples, transport_name, req.tags)

    def params(caller: ClientCallerDep) -> Response:
        model = ops.fetch_global(caller)
        return Response(model.payload, media_type=PARAMS_MEDIA_TYPE, headers={HEADER_ROUND: str(model.round)})

    r.add_api_route("/client", params, methods=["GET"], summary="Initial (current global) parameters, compressed",
                    response_class=Response, responses=_PARAMS)
    r.add_api_route("/transmitter", params, methods=["GET"], summary="Updated global parameters, compressed",
                    response_class=Response, responses=_PARAMS)

    @r.post("/client/signal", summary="Report the client's state; long-poll for what to do next")
    async def signal(req: SignalRequest, request: Request, caller: ClientCallerDep) -> Instruction:
        return await while_connected(request, lambda alive: ops.signal(caller, req.state, req.wait_s, alive))

    @r.post("/client/evaluation", summary="A client's evaluation of a round's global model (federated evaluation)")
    def evaluation(req: EvaluationRequest, caller: ClientCallerDep) -> EvaluationReceipt:
        return ops.submit_evaluation(caller, req.round, EvaluationReport(req.num_examples, req.loss, req.metrics))

    @r.delete("/client/{client_id}", summary="Disconnect a client (itself with its token, or the admin)")
    def disconnect(client_id: Annotated[str, Path(max_length=MAX_CLIENT_ID_CHARS)],
                   caller: BearerCallerDep) -> ControlResult:
        return ops.disconnect(client_id, caller=caller)

    @r.post("/transmitter/{name}", summary="A client's local parameters (binary body)",
            openapi_extra=_BINARY_BODY | {"parameters": [_METRICS_HEADER]})
    async def local_parameters(
        name: Annotated[str, Path(min_length=1, max_length=MAX_NAME_CHARS)],
        request: Request,
        caller: ClientCallerDep,
        x_fedcore_round: Annotated[int, Header(ge=0)],
        x_fedcore_samples: Annotated[int, Header(ge=1)],
    ) -> UpdateAccepted:
        declared_header = request.headers.get("content-length")
        declared = int(declared_header) if declared_header is not None and declared_header.isdigit() else None
        metrics_header = request.headers.get(HEADER_METRICS)  # documented above: a JSON content parameter
        if metrics_header is not None and len(metrics_header) > MAX_METRICS_HEADER_CHARS:
            raise ValueError(f"{HEADER_METRICS} is over {MAX_METRICS_HEADER_CHARS} characters")
        metrics = parse_metrics(metrics_header, HEADER_METRICS)
        who = replace(caller, name=name)
        gate = ops.accept_update(who, x_fedcore_round, declared, x_fedcore_samples, metrics)
        received = await receive_update(request, gate)
        return UpdateAccepted(accepted=True, round=x_fedcore_round, bytes=received)

    return r
