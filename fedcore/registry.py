"""The client registry: who is in the federation, their tokens, and who may do what.

Tokens are never stored, only their SHA-256; every comparison is constant-time. Registration is
rate-limited per source address, sample counts are bounded, and clients that left long ago are
pruned from the live table (the round history keeps their names). Not thread-safe by itself:
the Federation calls it under its lock.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fedcore.errors import AuthError, ForbiddenError, RateLimitedError, UnknownClientError
from fedcore.operations import ClientInfo
from fedcore.states import ClientState

MAX_NAME_CHARS = 128
MAX_TAGS = 8
MAX_TAG_CHARS = 32


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class ClientRecord:
    """What the server knows of one client. The token itself is never stored, only its hash."""

    client_id: str
    name: str
    token_hash: str
    transport: str
    state: ClientState = ClientState.JOIN
    num_samples: int = 0
    joined_at: float = 0.0
    last_seen: float = 0.0
    rounds: list[int] = field(default_factory=list)
    wanted_transport: str | None = None  # set by an admin: the client switches before its next round
    kicked: bool = False  # removed by an admin: told to stop, never revived by its own heartbeats
    left_at: float | None = None
    tags: list[str] = field(default_factory=list)

    def info(self) -> ClientInfo:
        return ClientInfo(
            self.client_id, self.name, self.transport, self.state.value, self.num_samples, self.joined_at,
            self.last_seen, tuple(self.rounds), self.wanted_transport, tuple(self.tags),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id, "name": self.name, "token_hash": self.token_hash,
            "transport": self.transport, "num_samples": self.num_samples, "rounds": self.rounds,
            "kicked": self.kicked, "tags": self.tags,
        }


class RateLimiter:
    """At most ``limit`` events per ``window_s`` per key (sliding window, bounded memory)."""

    def __init__(self, limit: int, window_s: float, max_keys: int = 10_000) -> None:
        self.limit, self.window_s, self.max_keys = limit, window_s, max_keys
        self._hits: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float) -> bool:
        if self.limit <= 0:  # disabled (simulations register thousands of in-process clients)
            return True
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:  # forget idle sources first
                self._hits = {k: v for k, v in self._hits.items() if v and now - v[-1] < self.window_s}
            hits = self._hits.setdefault(key, deque())
        while hits and now - hits[0] >= self.window_s:
            hits.popleft()
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        return True


class ClientRegistry:
    """Client records, credentials and admin checks."""

    def __init__(
        self,
        *,
        admin_token: str | None,
        register_limit: int,
        register_window_s: float,
        max_num_samples: int,
        prune_left_after_s: float,
    ) -> None:
        self._admin_hash = hash_token(admin_token) if admin_token else None
        self._limiter = RateLimiter(register_limit, register_window_s)
        self.max_num_samples = max_num_samples
        self.prune_left_after_s = prune_left_after_s
        self.records: dict[str, ClientRecord] = {}

    # ------------------------------------------------------------------ credentials
    @property
    def open_control(self) -> bool:
        """True when no admin token is configured (local experiments: --no-auth)."""
        return self._admin_hash is None

    def is_admin(self, token: str | None) -> bool:
        return bool(token) and self._admin_hash is not None and hmac.compare_digest(
            self._admin_hash, hash_token(token or "")
        )

    def require_admin(self, token: str | None) -> None:
        """No token → AuthError; a token that is not the admin's → ForbiddenError."""
        if self._admin_hash is None or self.is_admin(token):
            return
        if not token:
            raise AuthError("round control needs the admin token (Authorization: Bearer <admin token>)")
        raise ForbiddenError("this token does not grant round control")

    def auth(self, client_id: str | None, token: str | None) -> ClientRecord:
        if not client_id:
            raise AuthError("missing client id (REST: X-Fedcore-Client header)")
        if not token:  # before the lookup: an unauthenticated caller cannot probe which ids exist
            raise AuthError("missing client token")
        rec = self.records.get(client_id)
        if rec is None:
            raise UnknownClientError(f"unknown client {client_id!r}")
        if not token or not hmac.compare_digest(rec.token_hash, hash_token(token)):
            raise AuthError("wrong or missing client token")
        return rec

    def get(self, client_id: str) -> ClientRecord:
        rec = self.records.get(client_id)
        if rec is None:
            raise UnknownClientError(f"unknown client {client_id!r}")
        return rec

    # ------------------------------------------------------------------ joining
    def clip_samples(self, num_samples: int) -> tuple[int, bool]:
        """(bounded count, whether it was clipped): one client cannot dominate FedAvg by claim."""
        if num_samples < 0:
            raise ValueError("num_samples must be >= 0")
        if num_samples > self.max_num_samples:
            return self.max_num_samples, True
        return num_samples, False

    def add(self, name: str, num_samples: int, transport: str, tags: list[str], peer: str,
            now: float) -> tuple[ClientRecord, str]:
        """A new client and its token (shown once); refused past the per-source rate."""
        check_name(name)
        tags = check_tags(tags)
        if not self._limiter.allow(peer, now):
            raise RateLimitedError(f"too many registrations from {peer}; retry in a few seconds")
        client_id = uuid.uuid4().hex[:16]  # de-identified: unrelated to the name or address
        token = secrets.token_urlsafe(24)
        samples, _ = self.clip_samples(num_samples)
        rec = ClientRecord(client_id, name, hash_token(token), transport, ClientState.JOIN, samples, now, now,
                           tags=tags)
        self.records[client_id] = rec
        return rec, token

    def prune(self, now: float) -> list[ClientRecord]:
        """Drop clients that left more than ``prune_left_after_s`` ago from the live table."""
        gone = [r for r in self.records.values()
                if r.state is ClientState.LEFT and r.left_at is not None and now - r.left_at > self.prune_left_after_s]
        for r in gone:
            del self.records[r.client_id]
        return gone

    def active(self) -> list[ClientRecord]:
        return [r for r in self.records.values() if r.state is not ClientState.LEFT]

    def ready_ids(self) -> list[str]:
        return [r.client_id for r in self.records.values() if r.state in (ClientState.READY, ClientState.FINISH)]

    def name_of(self, client_id: str) -> str:
        rec = self.records.get(client_id)
        return rec.name if rec is not None else client_id

    # ------------------------------------------------------------------ persistence
    def snapshot(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.records.values()]

    def restore(self, rows: list[dict[str, Any]], now: float) -> None:
        """Known clients come back as 'left' until they reconnect with their old token."""
        for row in rows:
            rec = ClientRecord(
                client_id=str(row["client_id"]), name=str(row["name"]), token_hash=str(row["token_hash"]),
                transport=str(row.get("transport", "unknown")), state=ClientState.LEFT,
                num_samples=int(row.get("num_samples", 0)), joined_at=now, last_seen=now,
                rounds=[int(r) for r in row.get("rounds", [])], kicked=bool(row.get("kicked", False)),
                left_at=now, tags=[str(t) for t in row.get("tags", [])],
            )
            self.records[rec.client_id] = rec


def check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"client name must be 1..{MAX_NAME_CHARS} printable characters")


def check_tags(tags: list[str] | tuple[str, ...]) -> list[str]:
    tags = list(tags)
    if len(tags) > MAX_TAGS or any(not t or len(t) > MAX_TAG_CHARS or not t.isprintable() for t in tags):
        raise ValueError(f"at most {MAX_TAGS} tags of 1..{MAX_TAG_CHARS} printable characters")
    return tags
