"""Request and error bodies of the REST API (responses are the core's dataclasses, serialised as
is). Limits here describe what the core enforces, so the OpenAPI schema tells the truth: the core
stays the one place that checks them (e.g. printable names), the schema only states them."""
from __future__ import annotations

import sys
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from fedcore.constants import MAX_METRICS
from fedcore.errors import ErrorKind
from fedcore.registry import MAX_NAME_CHARS, MAX_TAG_CHARS, MAX_TAGS
from fedcore.states import ClientState

MAX_LONG_POLL_S = 30.0
MAX_METRIC_NAME_CHARS = 64  # fedcore.federation._check_metrics
_LARGEST_FLOAT = sys.float_info.max
PRINTABLE_FORMAT = "printable"


def _printable(description: str) -> dict[str, Any]:
    """A string of printable characters (``str.isprintable``: Unicode categories L, M, N, P, S
    and the space), what the core checks names and tags with. Stated as a format: the same set
    as a regular expression is 700 ranges, which generators (schemathesis) take seconds to
    compile each time; tests register a generator for the format (tests/openapi_hooks.py)."""
    return {"format": PRINTABLE_FORMAT,
            "description": f"{description}; printable: Unicode categories L, M, N, P, S or the space"}


def _integral(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer: accept integral floats, nothing else lax."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


SampleCount = Annotated[int, Field(ge=0, strict=True), BeforeValidator(_integral)]
Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS,
                           json_schema_extra=_printable("a tag"))]


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS,
                      json_schema_extra=_printable("the client's name"))
    num_samples: SampleCount = Field(0, description="local training samples; the server clips large counts")
    client_id: str | None = Field(None, max_length=64, description="set with token to resume a registration")
    token: str | None = Field(None, max_length=256)
    transport: str = Field("rest", max_length=32,
                           description="informational: the server records the transport the request arrived on")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description="e.g. ['browser']")


class SignalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: ClientState
    wait_s: float = Field(0.0, ge=0.0, le=MAX_LONG_POLL_S, strict=True)


FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
MetricName = Annotated[str, Field(min_length=1, max_length=MAX_METRIC_NAME_CHARS)]


class EvaluationRequest(BaseModel):
    """A client's evaluation of a round's global model (answer to an ``evaluate`` instruction)."""

    model_config = ConfigDict(extra="forbid")

    round: SampleCount = Field(description="the round whose global model was scored")
    num_examples: SampleCount = Field(description="validation examples scored (0: none; the server clips large counts)")
    loss: FiniteNumber = Field(description="mean loss over those examples")
    metrics: dict[MetricName, FiniteNumber] = Field(default_factory=dict, max_length=MAX_METRICS,
                                                    description="e.g. {'accuracy': 0.93}")


class UpdateAccepted(BaseModel):
    """The answer to an uploaded update: it was folded into the round."""

    accepted: bool
    round: int
    bytes: int


class ErrorBody(BaseModel):
    """Every error answer: a one-line message and the fedcore error kind (fedcore.errors.ErrorKind)."""

    detail: str
    error: ErrorKind


# X-Fedcore-Metrics: a JSON object in a header, described by content (OpenAPI 3.1) so a
# generator sends JSON; the core checks the same bounds.
METRICS_HEADER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": MAX_METRICS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_METRIC_NAME_CHARS},
    "additionalProperties": {"type": "number", "minimum": -_LARGEST_FLOAT, "maximum": _LARGEST_FLOAT},
}
