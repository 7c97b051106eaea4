"""Shared pieces of the REST routers: documented error responses and header parsing."""
from __future__ import annotations

import json
from typing import Any

from fedcore.errors import PayloadError
from transports.rest.errors import STATUS_FOR_KIND
from transports.rest.schemas import ErrorBody

VALIDATION_STATUS = 422  # FastAPI's request validation, answered with the same ErrorBody

# Every error a route may answer, declared once for the OpenAPI schema (500 is a bug, not an answer).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": kind.value.replace("_", " ")}
    for kind, code in STATUS_FOR_KIND.items() if code != 500
}
ERROR_RESPONSES[VALIDATION_STATUS] = {"model": ErrorBody, "description": "the request does not match this schema"}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ERROR_RESPONSES entries of ``codes``: for routes that can answer only a few."""
    return {code: ERROR_RESPONSES[code] for code in codes}


def json_header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An optional header whose value is JSON, as an OpenAPI parameter with content."""
    return {"name": name, "in": "header", "required": False, "description": description,
            "content": {"application/json": {"schema": schema}}}


def parse_metrics(header: str | None, header_name: str) -> dict[str, float] | None:
    """The metrics JSON header (an object of numbers; the core checks the values)."""
    if not header:
        return None
    try:
        value = json.loads(header)
    except ValueError as exc:
        raise PayloadError(f"bad {header_name} header: {exc}") from exc
    if not isinstance(value, dict):
        raise PayloadError(f"bad {header_name} header: must be a JSON object")
    return value
