"""Core values ⇄ proto messages: states, actions, instructions, JSON views."""
from __future__ import annotations

import json
from typing import Any

from fedcore.errors import PayloadError
from fedcore.federation import Instruction
from fedcore.states import Action, ClientState

from . import fedcore_pb2 as pb

_STATE_TO_PB = {s: pb.ClientState.Value(f"CLIENT_STATE_{s.name}") for s in ClientState}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}
_ACTION_TO_PB = {a: pb.Action.Value(f"ACTION_{a.name}") for a in Action}
_ACTION_FROM_PB = {v: k for k, v in _ACTION_TO_PB.items()}


def state_to_pb(state: ClientState | str) -> int:
    return _STATE_TO_PB[ClientState(state)]


def state_from_pb(value: int) -> ClientState:
    try:
        return _STATE_FROM_PB[value]
    except KeyError:
        raise PayloadError(f"unknown client state {value}") from None


def instruction_to_pb(instr: Instruction) -> pb.Instruction:
    return pb.Instruction(
        action=_ACTION_TO_PB[instr.action], round=instr.round, config_json=json.dumps(instr.config or {})
    )


def instruction_from_pb(msg: pb.Instruction) -> Instruction:
    config = json.loads(msg.config_json) if msg.config_json else {}
    return Instruction(_ACTION_FROM_PB.get(msg.action, Action.WAIT), int(msg.round), config)


def to_json(value: Any) -> str:
    return json.dumps(value, default=str)


def from_json(text: str) -> Any:
    return json.loads(text) if text else {}
