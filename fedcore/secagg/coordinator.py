"""The server's conductor of one secure-aggregation round: maps fedcore client ids to protocol
ids, decodes the clients' messages into :class:`SecAggServer`, closes each stage when everyone
expected has sent or its deadline passed (the late ones become drop-outs), and prepares each
client's reply. No locking and no I/O: the Federation calls it under its own lock.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Set
from dataclasses import dataclass, field

from fedcore.secagg import codec
from fedcore.secagg.codec import Kind
from fedcore.secagg.params import SecAggError, SecAggParams
from fedcore.secagg.protocol import Aggregate, RoundContext, SecAggServer

STAGES = ("hello", "keys", "shares", "masked", "unmask")


@dataclass
class StageStats:
    """Per stage: wall time from its opening to its closing and the bytes clients sent in it."""

    seconds: dict[str, float] = field(default_factory=dict)
    bytes_in: dict[str, int] = field(default_factory=dict)
    bytes_out: dict[str, int] = field(default_factory=dict)


class SecAggRound:
    def __init__(self, number: int, selected: Iterable[str], params: SecAggParams, length: int,
                 stage_timeout_s: float, max_bytes: int) -> None:
        order = sorted(selected)
        self.number = number
        self.index = {cid: k + 1 for k, cid in enumerate(order)}
        self.client_of = {k: cid for cid, k in self.index.items()}
        self.ctx = RoundContext(os.urandom(16), tuple(range(1, len(order) + 1)), params)
        self.server = SecAggServer(self.ctx, length)
        self.length = length
        self.stage_timeout_s = stage_timeout_s
        self.max_bytes = max_bytes
        self.deadline: float | None = None  # of the open stage; the key stage's starts at its first message
        self.sent: dict[str, set[int]] = {s: set() for s in STAGES[1:]}
        self.result: Aggregate | None = None
        self.error: str | None = None
        self.stats = StageStats()
        self._opened = time.perf_counter()
        self._cache: dict[str, bytes] = {}

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def _id(self, client_id: str) -> int:
        try:
            return self.index[client_id]
        except KeyError:
            raise SecAggError(f"client is not selected for secure-aggregation round {self.number}") from None

    def submit(self, client_id: str, stage: str, body: bytes, now: float) -> None:
        """Take one client's message of ``stage`` (an empty body is a poll)."""
        if stage not in STAGES:
            raise SecAggError(f"unknown secagg stage {stage!r}; one of {', '.join(STAGES)}")
        me = self._id(client_id)
        if stage == "hello" or not body or self.done:
            return
        s, mb = self.server, self.max_bytes
        if stage == "keys":
            msg_a = codec.decode_advertise(body, mb)
            self._own(msg_a.sender, me)
            s.receive_keys(msg_a)
            if self.deadline is None:
                self.deadline = now + self.stage_timeout_s
        elif stage == "shares":
            msg_s = codec.decode_shares(body, mb)
            self._own(msg_s.sender, me)
            s.receive_shares(msg_s)
        elif stage == "masked":
            msg_m = codec.decode_masked(body, mb)
            self._own(msg_m.sender, me)
            s.receive_masked(msg_m)
        else:
            msg_u = codec.decode_unmask(body, mb)
            self._own(msg_u.sender, me)
            s.receive_unmask(msg_u)
        self.sent[stage].add(me)
        self.stats.bytes_in[stage] = self.stats.bytes_in.get(stage, 0) + len(body)

    @staticmethod
    def _own(sender: int, me: int) -> None:
        if sender != me:
            raise SecAggError(f"a message signed as client {sender} came from client {me}")

    def _expected(self) -> set[int]:
        st = self.server.stage
        if st == 0:
            return set(self.ctx.ids)
        return set(self.sent[STAGES[st]])  # who sent the previous stage's message

    def advance(self, now: float, gone: Set[str]) -> bool:
        """Close every stage that is due; True when something changed (replies may be ready)."""
        changed = False
        while not self.done and self.server.stage < 4:
            name = STAGES[self.server.stage + 1]
            expected = self._expected() - {self.index[c] for c in gone if c in self.index}
            late = self.deadline is not None and now >= self.deadline
            if not (expected <= self.sent[name] or late):
                break
            try:
                self._close(self.server.stage)
            except SecAggError as exc:
                self.error = str(exc)
            now_pc = time.perf_counter()
            self.stats.seconds[name] = round(now_pc - self._opened, 6)
            self._opened = now_pc
            self.deadline = now + self.stage_timeout_s
            changed = True
        return changed

    def _close(self, stage: int) -> None:
        s = self.server
        if stage == 0:
            self._cache["keys"] = codec.encode_keybook(s.key_book())
        elif stage == 1:
            s.close_shares()
        elif stage == 2:
            self._cache["masked"] = codec.encode_survivors(s.survivors())
        else:
            self.result = s.finish()

    def reply(self, client_id: str, stage: str) -> bytes | None:
        """This client's answer for ``stage``, or None while the stage is still open."""
        me = self._id(client_id)
        if self.error is not None:
            return codec.simple(Kind.FAILED, reason=self.error)
        if stage == "hello":
            ctx = self.ctx
            out = codec.encode_context(codec.Context(ctx.session, ctx.ids, me, ctx.params, self.length))
        elif stage == "unmask":
            out = codec.simple(Kind.DONE) if me in self.sent["unmask"] else codec.simple(Kind.FAILED, reason="no shares")
        elif self.server.stage <= STAGES.index(stage) - 1:
            return None
        elif stage == "shares":
            if me not in self.sent["shares"]:
                return codec.simple(Kind.FAILED, reason="this client's shares arrived too late")
            out = codec.encode_inbox(self.server.inbox_for(me))
        else:
            if me not in self.sent[stage]:
                return codec.simple(Kind.FAILED, reason=f"this client's {stage} message arrived too late")
            out = self._cache[stage]
        self.stats.bytes_out[stage] = self.stats.bytes_out.get(stage, 0) + len(out)
        return out

    def has_masked_input(self, client_id: str) -> bool:
        """True once this client's masked update is in: its training for the round is done,
        though the protocol still runs (it must not be asked to train again)."""
        return self.index.get(client_id, 0) in self.sent["masked"]

    def survivors(self) -> set[str]:
        """The fedcore ids whose updates are in the sum (after a successful finish)."""
        return {self.client_of[i] for i in self.result.survivors} if self.result is not None else set()
