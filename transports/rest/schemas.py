"""Request bodies of the REST API (responses are the core's dataclasses, serialised as is)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fedcore.states import ClientState

MAX_LONG_POLL_S = 30.0


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    num_samples: int = Field(0, ge=0, strict=True)
    client_id: str | None = Field(None, max_length=64, description="set with token to resume a registration")
    token: str | None = Field(None, max_length=256)
    transport: str = Field("rest", max_length=32)
    tags: list[str] = Field(default_factory=list, max_length=8, description="e.g. ['browser']")


class SignalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: ClientState
    wait_s: float = Field(0.0, ge=0.0, le=MAX_LONG_POLL_S, strict=True)


class ErrorBody(BaseModel):
    detail: str
    error: str
