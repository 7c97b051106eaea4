"""The event log behind live views (dashboard SSE): a bounded, sequence-numbered ring."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from fedcore.operations import Event

MAX_EVENTS = 2000


class EventLog:
    """Not thread-safe by itself: the Federation appends under its lock and waits on its
    condition. Readers ask for everything after the last sequence number they saw."""

    def __init__(self, wall_clock: Callable[[], float], capacity: int = MAX_EVENTS) -> None:
        self._wall = wall_clock
        self._events: deque[Event] = deque(maxlen=capacity)
        self.seq = 0

    def emit(self, kind: str, data: Any) -> Event:
        self.seq += 1
        event = Event(self.seq, kind, data, self._wall())
        self._events.append(event)
        return event

    def since(self, seq: int) -> list[Event]:
        if seq >= self.seq:
            return []
        return [e for e in self._events if e.seq > seq]
