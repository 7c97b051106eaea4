"""httpx client for the REST transport: every client-side operation, typed results, and HTTP
errors mapped back to the fedcore error the server raised (by the ``error`` kind it sends)."""
from __future__ import annotations

import json
import ssl
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Any, TypeVar

import httpx
from pydantic import TypeAdapter

from fedcore.config import Settings
from fedcore.constants import HEADER_CLIENT_ID, HEADER_METRICS, HEADER_ROUND, HEADER_SAMPLES, PARAMS_MEDIA_TYPE
from fedcore.errors import AuthError, ErrorKind, TransportError, error_for
from fedcore.operations import (
    ClientInfo,
    ControlResult,
    EvaluationReceipt,
    EvaluationReport,
    GlobalModel,
    Health,
    Instruction,
    Registration,
    RoundRecord,
    Status,
)
from fedcore.states import ClientState
from fedcore.transport import ChunkSink, ClientTransport, Payload
from transports.rest.errors import KIND_FOR_STATUS

_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
_POLL_MARGIN_S = 10.0
T = TypeVar("T")


@lru_cache(maxsize=None)
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def parse(tp: type[T] | Any, data: Any) -> T:
    """A core dataclass (or a list of them) from the JSON the server sent."""
    key: Any = tp  # a type or a list[...] alias: hashable, as the cache needs
    adapter: TypeAdapter[T] = _adapter(key)
    return adapter.validate_python(data)


class RestSplitChannel:
    """Split messages as POST /split/{round} requests, ``window`` of them in flight at once over
    keep-alive connections of the transport's own pool (httpx.Client is thread-safe)."""

    def __init__(self, transport: RestClientTransport, round_number: int, window: int) -> None:
        self._t, self._round = transport, round_number
        self._pool = ThreadPoolExecutor(max_workers=max(1, window), thread_name_prefix="fedcore-split")

    def _post(self, message: bytes) -> bytes:
        resp = self._t._call("POST", f"/split/{self._round}", content=message,
                             headers={"Content-Type": PARAMS_MEDIA_TYPE})
        return resp.content

    def submit(self, message: bytes) -> Future[bytes]:
        return self._pool.submit(self._post, message)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RestClientTransport(ClientTransport):
    name = "rest"

    def __init__(self, address: str, settings: Settings) -> None:
        super().__init__(address, settings)
        verify: Any = ssl.create_default_context(cafile=str(settings.tls_ca)) if settings.tls_ca else True
        self._http = httpx.Client(base_url=address, timeout=_TIMEOUT, verify=verify,
                                  limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

    # ------------------------------------------------------------------ plumbing
    def _headers(self, token: str | None, use_client_token: bool, extra: Mapping[str, str] | None) -> dict[str, str]:
        h: dict[str, str] = {}
        tok = token if token is not None else (self.token if use_client_token else None)
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        if self.client_id:
            h[HEADER_CLIENT_ID] = self.client_id
        h.update(extra or {})
        return h

    @staticmethod
    def _raise_for_status(resp: httpx.Response) -> None:
        if resp.status_code >= 400:
            try:
                body = resp.json()
                detail, kind = str(body.get("detail", resp.text)), body.get("error")
            except (ValueError, AttributeError):
                detail, kind = resp.text, None
            fallback = KIND_FOR_STATUS.get(resp.status_code, ErrorKind.UNAVAILABLE)
            raise error_for(kind, fallback, f"{detail} [HTTP {resp.status_code}]")

    def _call(self, method: str, url: str, *, token: str | None = None, use_client_token: bool = True,
              timeout: float | None = None, headers: Mapping[str, str] | None = None, **kw: Any) -> httpx.Response:
        h = self._headers(token, use_client_token, headers)
        try:
            resp = self._http.request(method, url, headers=h, timeout=timeout if timeout is not None else _TIMEOUT, **kw)
        except httpx.TransportError as exc:  # connect / read failures: the caller may retry
            raise TransportError(f"{method} {self.address}{url}: {exc}") from exc
        self._raise_for_status(resp)
        return resp

    def _admin_call(self, method: str, url: str, admin_token: str | None) -> ControlResult:
        token = self.admin(admin_token)
        resp = self._call(method, url, token=token or "", use_client_token=False)
        return parse(ControlResult, resp.json())

    # ------------------------------------------------------------------ client operations
    def register(self, name: str, num_samples: int, *, client_id: str | None = None, token: str | None = None,
                 tags: Sequence[str] = ()) -> Registration:
        body = {"name": name, "num_samples": num_samples, "client_id": client_id, "token": token,
                "transport": self.name, "tags": list(tags)}
        reg: Registration = parse(Registration, self._call("POST", "/client", json=body, use_client_token=False).json())
        self.set_credentials(reg.client_id, reg.token)
        self.client_name = name
        return reg

    def _params(self, url: str, sink: ChunkSink | None = None) -> GlobalModel:
        if sink is None:
            resp = self._call("GET", url)
            return GlobalModel(int(resp.headers[HEADER_ROUND]), resp.content)
        parts: list[bytes] = []
        try:
            with self._http.stream("GET", url, headers=self._headers(None, True, None), timeout=_TIMEOUT) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._raise_for_status(resp)
                for chunk in resp.iter_bytes():  # handed on as it arrives: decoding overlaps the download
                    parts.append(chunk)
                    sink(chunk)
                return GlobalModel(int(resp.headers[HEADER_ROUND]), b"".join(parts))
        except httpx.TransportError as exc:
            raise TransportError(f"GET {self.address}{url}: {exc}") from exc

    def fetch_global(self, sink: ChunkSink | None = None) -> GlobalModel:
        return self._params("/transmitter", sink)

    def secagg_exchange(self, round_number: int, stage: str, body: bytes, *, wait_s: float = 0.0) -> bytes:
        resp = self._call("POST", f"/secagg/{round_number}/{stage}", params={"wait_s": wait_s}, content=body,
                          headers={"Content-Type": PARAMS_MEDIA_TYPE}, timeout=wait_s + _POLL_MARGIN_S)
        return resp.content

    def fetch_initial(self) -> GlobalModel:
        return self._params("/client")

    def signal(self, state: ClientState, *, wait_s: float = 0.0) -> Instruction:
        resp = self._call("POST", "/client/signal", json={"state": state.value, "wait_s": wait_s},
                          timeout=wait_s + _POLL_MARGIN_S)
        return parse(Instruction, resp.json())

    def push_update(self, round_number: int, payload: Payload, num_samples: int, metrics: Mapping[str, float]) -> None:
        if not self.client_name:
            raise AuthError("register first: this transport has no client name")
        headers = {
            "Content-Type": PARAMS_MEDIA_TYPE,
            HEADER_ROUND: str(round_number),
            HEADER_SAMPLES: str(num_samples),
            HEADER_METRICS: json.dumps(dict(metrics)),
        }
        # Whole bytes go with a Content-Length; chunks go with chunked transfer encoding as they are encoded.
        body = payload if isinstance(payload, (bytes, bytearray, memoryview)) else (bytes(c) for c in payload)
        self._call("POST", f"/transmitter/{self.client_name}", content=body, headers=headers)

    def submit_evaluation(self, round_number: int, report: EvaluationReport) -> EvaluationReceipt:
        body = {"round": round_number, "num_examples": report.num_examples, "loss": report.loss,
                "metrics": dict(report.metrics)}
        return parse(EvaluationReceipt, self._call("POST", "/client/evaluation", json=body).json())

    def disconnect(self) -> None:
        if self.client_id:
            self._call("DELETE", f"/client/{self.client_id}")

    def open_split_channel(self, round_number: int, window: int) -> RestSplitChannel:
        return RestSplitChannel(self, round_number, window)

    # ------------------------------------------------------------------ views
    def status(self) -> Status:
        return parse(Status, self._call("GET", "/status").json())

    def clients(self) -> list[ClientInfo]:
        return parse(list[ClientInfo], self._call("GET", "/clients").json())

    def history(self) -> list[RoundRecord]:
        return parse(list[RoundRecord], self._call("GET", "/history").json())

    def health(self) -> Health:
        resp = self._http.get("/health")  # 503 carries the same body: not an error here
        return parse(Health, resp.json())

    # ------------------------------------------------------------------ round control
    def start_autorun(self, rounds: int, admin_token: str | None = None) -> ControlResult:
        return self._admin_call("POST", f"/client/autorun/{rounds}", admin_token)

    def stop_autorun(self, admin_token: str | None = None) -> ControlResult:
        return self._admin_call("DELETE", "/client/autorun", admin_token)

    def step(self, admin_token: str | None = None) -> ControlResult:
        return self._admin_call("POST", "/round/step", admin_token)

    def kick(self, client_id: str, admin_token: str | None = None) -> ControlResult:
        return self._admin_call("DELETE", f"/client/{client_id}", admin_token)

    def request_transport(self, client_id: str, transport: str, admin_token: str | None = None) -> ControlResult:
        return self._admin_call("POST", f"/client/{client_id}/transport/{transport}", admin_token)

    def close(self) -> None:
        self._http.close()
