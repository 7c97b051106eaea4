"""The round state machine: which round is open, who was selected, when it closes, autorun.

Pure bookkeeping with an injected clock; the Federation calls it under its lock and performs
the side effects (aggregation, events, checkpoints). Every lifecycle decision is taken in
``Federation.tick``, so tests drive it deterministically with a fake clock.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedcore.errors import RoundStateError
from fedcore.operations import EvaluationReport, Refusal, RoundRecord


@dataclass
class RoundState:
    number: int
    selected: set[str]
    started_at: float
    deadline: float
    train_config: dict[str, Any] = field(default_factory=dict)
    submitted: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)
    bytes_in: int = 0
    bytes_out: int = 0
    client_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    client_samples: dict[str, int] = field(default_factory=dict)  # by name: the weight each update got
    refused: list[Refusal] = field(default_factory=list)
    clipped: set[str] = field(default_factory=set)

    @property
    def waiting(self) -> set[str]:
        return self.selected - self.submitted - self.dropped

    def waits_for(self, client_id: str) -> bool:
        """``client_id in waiting`` without building the set (a signal asks this; 10,000 clients)."""
        return client_id in self.selected and client_id not in self.submitted and client_id not in self.dropped

    def maybe_done(self) -> bool:
        """``not waiting`` likely, without building the set (asked after every update): may be
        true early (a client that submitted and then left counts twice), never late."""
        return len(self.submitted) + len(self.dropped) >= len(self.selected)


@dataclass
class EvalState:
    """The evaluation phase of a round: its global model is published, the selected clients
    score it; the phase closes when all answered (or left) or at its deadline."""

    number: int
    selected: set[str]
    deadline: float
    record: RoundRecord  # the round's record, completed with the evaluation when the phase closes
    reports: dict[str, EvaluationReport] = field(default_factory=dict)  # by client id
    dropped: set[str] = field(default_factory=set)

    def waits_for(self, client_id: str) -> bool:
        return client_id in self.selected and client_id not in self.reports and client_id not in self.dropped

    @property
    def waiting(self) -> set[str]:
        return self.selected - set(self.reports) - self.dropped


class RoundController:
    """Open round, closing round and the autorun target (absolute: the round number to reach)."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.current: RoundState | None = None
        self.closing: RoundState | None = None
        self.evaluation: EvalState | None = None
        self.autorun_target: int | None = None
        self.autorun_stopped = False  # an admin stopped autorun: a restart must not resume it
        self.finished = False

    @property
    def busy(self) -> bool:
        return self.current is not None or self.closing is not None or self.evaluation is not None

    def autorun_wants_round(self, completed: int) -> bool:
        return self.autorun_target is not None and completed < self.autorun_target

    def set_autorun(self, target: int) -> None:
        self.autorun_target = target
        self.autorun_stopped = False
        self.finished = False

    def stop_autorun(self) -> None:
        self.autorun_target = None
        self.autorun_stopped = True

    def start(self, number: int, selected: list[str], now: float, train_config: dict[str, Any]) -> RoundState:
        rs = RoundState(number, set(selected), now, now + self.deadline_s, dict(train_config))
        self.current = rs
        self.finished = False
        return rs

    def due(self, now: float) -> RoundState | None:
        """The open round if it must close now (everyone reported, or its deadline passed)."""
        cur = self.current
        if cur is not None and (not cur.waiting or now >= cur.deadline):
            self.current, self.closing = None, cur
            return cur
        return None

    def closed(self) -> None:
        self.closing = None

    def evaluation_due(self, now: float) -> EvalState | None:
        """The evaluation phase if it must close now (everyone answered, or its deadline passed)."""
        ev = self.evaluation
        if ev is not None and (not ev.waiting or now >= ev.deadline):
            self.evaluation = None
            return ev
        return None

    def check_evaluating(self, client_id: str, round_number: int) -> EvalState:
        ev = self.evaluation
        if ev is None or ev.number != round_number:
            now = ev.number if ev else None
            raise RoundStateError(f"round {round_number} is not being evaluated (evaluating: {now})")
        if client_id not in ev.selected or client_id in ev.dropped:
            raise RoundStateError(f"client is not selected to evaluate round {round_number}")
        if client_id in ev.reports:
            raise RoundStateError(f"client already sent its evaluation of round {round_number}")
        return ev

    def check_open(self, client_id: str, round_number: int) -> RoundState:
        cur = self.current
        if cur is None or cur.number != round_number:
            now = cur.number if cur else None
            raise RoundStateError(f"round {round_number} is not open (open round: {now})")
        if client_id not in cur.selected or client_id in cur.dropped:
            raise RoundStateError(f"client is not selected for round {round_number}")
        if client_id in cur.submitted:
            raise RoundStateError(f"client already sent its update for round {round_number}")
        return cur

    def is_waiting_for(self, client_id: str) -> bool:
        return self.current is not None and self.current.waits_for(client_id)
