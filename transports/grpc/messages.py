"""Core dataclasses ⇄ proto messages, field by field, both ways.

The only place that knows both shapes: the servicer maps results to messages with the ``*_to_pb``
functions, the client maps replies back with ``*_from_pb``, so a field added to an operations
dataclass is added here once. Optional values use proto3 ``optional`` (presence), never
sentinels. The training config stays JSON: its keys are open-ended (see the .proto).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message

from fedcore.errors import PayloadError
from fedcore.operations import (
    ClientInfo,
    ControlResult,
    Endpoint,
    EvaluationReceipt,
    EvaluationReport,
    Health,
    Instruction,
    Refusal,
    Registration,
    RoundRecord,
    Status,
    WireOptions,
)
from fedcore.states import Action, ClientState

from . import fedcore_pb2 as pb

# By name, so a state or action added to the core without a proto value fails at import.
_STATE_TO_PB: dict[ClientState, pb.ClientState] = {s: getattr(pb, f"CLIENT_STATE_{s.name}") for s in ClientState}
_STATE_FROM_PB: dict[int, ClientState] = {v: k for k, v in _STATE_TO_PB.items()}
_ACTION_TO_PB: dict[Action, pb.Action] = {a: getattr(pb, f"ACTION_{a.name}") for a in Action}
_ACTION_FROM_PB: dict[int, Action] = {v: k for k, v in _ACTION_TO_PB.items()}


def _opt(msg: Message, name: str) -> Any:
    """The value of a proto3 ``optional`` field, or None when it is unset."""
    return getattr(msg, name) if msg.HasField(name) else None


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value)) if value else ""


def _from_json(text: str, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PayloadError(f"{what} must be a JSON object")
    return value


# ---------------------------------------------------------------------- enums
def state_to_pb(state: ClientState | str) -> pb.ClientState:
    return _STATE_TO_PB[ClientState(state)]


def state_from_pb(value: int) -> ClientState:
    try:
        return _STATE_FROM_PB[value]
    except KeyError:
        raise PayloadError(f"unknown client state {value}") from None


def action_from_pb(value: int) -> Action:
    try:
        return _ACTION_FROM_PB[value]
    except KeyError:
        raise PayloadError(f"unknown action {value}") from None


# ---------------------------------------------------------------------- small values
def wire_to_pb(w: WireOptions) -> pb.WireOptions:
    return pb.WireOptions(dtype=w.dtype, codec=w.codec, level=w.level, filter=w.filter, update=w.update,
                          framing=w.framing)


def wire_from_pb(m: pb.WireOptions) -> WireOptions:
    return WireOptions(m.dtype, m.codec, _opt(m, "level"), m.filter, m.update or "weights", m.framing or "whole")


def endpoint_to_pb(e: Endpoint) -> pb.Endpoint:
    return pb.Endpoint(transport=e.transport, address=e.address)


def endpoint_from_pb(m: pb.Endpoint) -> Endpoint:
    return Endpoint(m.transport, m.address)


# ---------------------------------------------------------------------- client operations
def registration_to_pb(r: Registration) -> pb.Registration:
    return pb.Registration(
        client_id=r.client_id, token=r.token, round=r.round,
        wire=wire_to_pb(r.wire) if r.wire is not None else None,
        endpoints=[endpoint_to_pb(e) for e in r.endpoints],
    )


def registration_from_pb(m: pb.Registration) -> Registration:
    return Registration(
        m.client_id, m.token, int(m.round),
        wire_from_pb(m.wire) if m.HasField("wire") else None,
        tuple(endpoint_from_pb(e) for e in m.endpoints),
    )


def instruction_to_pb(i: Instruction) -> pb.Instruction:
    return pb.Instruction(
        action=_ACTION_TO_PB[i.action], round=i.round, config_json=_json(i.config),
        wire=wire_to_pb(i.wire) if i.wire is not None else None,
        switch_to=endpoint_to_pb(i.switch_to) if i.switch_to is not None else None,
        reason=i.reason,
    )


def instruction_from_pb(m: pb.Instruction) -> Instruction:
    return Instruction(
        action_from_pb(m.action), int(m.round), _from_json(m.config_json, "instruction config"),
        wire_from_pb(m.wire) if m.HasField("wire") else None,
        endpoint_from_pb(m.switch_to) if m.HasField("switch_to") else None,
        m.reason,
    )


def evaluation_to_pb(client_id: str, round_number: int, r: EvaluationReport) -> pb.EvaluationRequest:
    return pb.EvaluationRequest(client_id=client_id, round=round_number, num_examples=r.num_examples, loss=r.loss,
                                metrics={k: float(v) for k, v in r.metrics.items()})


def evaluation_from_pb(m: pb.EvaluationRequest) -> EvaluationReport:
    return EvaluationReport(int(m.num_examples), float(m.loss), dict(m.metrics))


def receipt_to_pb(r: EvaluationReceipt) -> pb.EvaluationReceipt:
    return pb.EvaluationReceipt(round=r.round, accepted=r.accepted)


def receipt_from_pb(m: pb.EvaluationReceipt) -> EvaluationReceipt:
    return EvaluationReceipt(int(m.round), m.accepted)


# ---------------------------------------------------------------------- views
def status_to_pb(s: Status) -> pb.Status:
    return pb.Status(
        round=s.round, current_round=s.current_round, round_open=s.round_open, autorun=s.autorun,
        autorun_target=s.autorun_target, rounds_left=s.rounds_left, num_clients=s.num_clients,
        min_clients=s.min_clients, ready=s.ready, accuracy=s.accuracy, loss=s.loss,
        last_updated=s.last_updated, finished=s.finished, selected=s.selected,
        selected_clients=list(s.selected_clients), clock=s.clock, submitted=s.submitted,
        payload_bytes=s.payload_bytes, wire=wire_to_pb(s.wire), strategy=s.strategy, stopping=s.stopping,
        endpoints=[endpoint_to_pb(e) for e in s.endpoints],
    )


def status_from_pb(m: pb.Status) -> Status:
    return Status(
        round=int(m.round), current_round=_opt(m, "current_round"), round_open=m.round_open, autorun=m.autorun,
        autorun_target=_opt(m, "autorun_target"), rounds_left=int(m.rounds_left), num_clients=int(m.num_clients),
        min_clients=int(m.min_clients), ready=int(m.ready), accuracy=_opt(m, "accuracy"), loss=_opt(m, "loss"),
        last_updated=_opt(m, "last_updated"), finished=m.finished, selected=int(m.selected),
        selected_clients=tuple(m.selected_clients), clock=m.clock, submitted=int(m.submitted),
        payload_bytes=int(m.payload_bytes), wire=wire_from_pb(m.wire), strategy=m.strategy, stopping=m.stopping,
        endpoints=tuple(endpoint_from_pb(e) for e in m.endpoints),
    )


def control_to_pb(c: ControlResult) -> pb.ControlResult:
    return pb.ControlResult(
        operation=c.operation, status=status_to_pb(c.status), round=c.round, autorun_target=c.autorun_target,
        client_id=c.client_id, transport=c.transport,
    )


def control_from_pb(m: pb.ControlResult) -> ControlResult:
    return ControlResult(
        m.operation, status_from_pb(m.status), _opt(m, "round"), _opt(m, "autorun_target"),
        _opt(m, "client_id"), _opt(m, "transport"),
    )


def client_info_to_pb(c: ClientInfo) -> pb.ClientInfo:
    return pb.ClientInfo(
        client_id=c.client_id, name=c.name, transport=c.transport, state=state_to_pb(c.state),
        num_samples=c.num_samples, joined_at=c.joined_at, last_seen=c.last_seen, rounds=list(c.rounds),
        wanted_transport=c.wanted_transport, tags=list(c.tags),
    )


def client_info_from_pb(m: pb.ClientInfo) -> ClientInfo:
    return ClientInfo(
        m.client_id, m.name, m.transport, state_from_pb(m.state).value, int(m.num_samples), m.joined_at,
        m.last_seen, tuple(int(r) for r in m.rounds), _opt(m, "wanted_transport"), tuple(m.tags),
    )


def round_record_to_pb(r: RoundRecord) -> pb.RoundRecord:
    return pb.RoundRecord(
        round=r.round, participants=list(r.participants), num_participants=r.num_participants,
        selected=r.selected, dropped=list(r.dropped), stragglers=list(r.stragglers), accuracy=r.accuracy,
        loss=r.loss, client_metrics={k: pb.Metrics(values=dict(v)) for k, v in r.client_metrics.items()},
        bytes_in=r.bytes_in, bytes_out=r.bytes_out, duration_s=r.duration_s, finished_at=r.finished_at,
        train_config_json=_json(r.train_config), refused=[pb.Refusal(client=x.client, reason=x.reason) for x in r.refused],
        clipped_samples=list(r.clipped_samples), strategy_metrics=dict(r.strategy_metrics),
        aggregation_error=r.aggregation_error,
        selected_clients=list(r.selected_clients), fit_metrics=dict(r.fit_metrics),
        federated_loss=r.federated_loss, federated_metrics=dict(r.federated_metrics), evaluated=list(r.evaluated),
    )


def round_record_from_pb(m: pb.RoundRecord) -> RoundRecord:
    return RoundRecord(
        round=int(m.round), participants=tuple(m.participants), num_participants=int(m.num_participants),
        selected=int(m.selected), dropped=tuple(m.dropped), stragglers=tuple(m.stragglers),
        accuracy=_opt(m, "accuracy"), loss=_opt(m, "loss"),
        client_metrics={k: dict(v.values) for k, v in m.client_metrics.items()},
        bytes_in=int(m.bytes_in), bytes_out=int(m.bytes_out), duration_s=m.duration_s, finished_at=m.finished_at,
        train_config=_from_json(m.train_config_json, "round train config"),
        refused=tuple(Refusal(x.client, x.reason) for x in m.refused), clipped_samples=tuple(m.clipped_samples),
        strategy_metrics=dict(m.strategy_metrics), aggregation_error=_opt(m, "aggregation_error"),
        selected_clients=tuple(m.selected_clients),
        fit_metrics=dict(m.fit_metrics), federated_loss=_opt(m, "federated_loss"),
        federated_metrics=dict(m.federated_metrics), evaluated=tuple(m.evaluated),
    )


def health_to_pb(h: Health) -> pb.Health:
    return pb.Health(ready=h.ready, round=h.round, version=h.version, serving=list(h.serving), expected=list(h.expected))


def health_from_pb(m: pb.Health) -> Health:
    return Health(m.ready, int(m.round), m.version, tuple(m.serving), tuple(m.expected))
