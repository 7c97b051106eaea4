"""httpx client for the REST transport; maps HTTP errors back to fedcore's typed errors."""
from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from fedcore.config import Settings
from fedcore.constants import HEADER_CLIENT_ID, HEADER_METRICS, HEADER_ROUND, HEADER_SAMPLES, PARAMS_MEDIA_TYPE
from fedcore.errors import FedcoreError, TransportError
from fedcore.federation import Instruction, Registration
from fedcore.states import Action, ClientState
from fedcore.transport import ClientTransport
from transports.rest.errors import ERROR_OF

_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
_POLL_MARGIN_S = 10.0


class RestClientTransport(ClientTransport):
    name = "rest"

    def __init__(self, address: str, settings: Settings) -> None:
        super().__init__(address, settings)
        verify: Any = ssl.create_default_context(cafile=str(settings.tls_ca)) if settings.tls_ca else True
        self._http = httpx.Client(base_url=address, timeout=_TIMEOUT, verify=verify)

    # ------------------------------------------------------------------ plumbing
    def _headers(self, token: str | None = None) -> dict[str, str]:
        h: dict[str, str] = {}
        tok = token if token is not None else self.token
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        if self.client_id:
            h[HEADER_CLIENT_ID] = self.client_id
        return h

    def _call(self, method: str, url: str, *, token: str | None = None, timeout: float | None = None,
              headers: Mapping[str, str] | None = None, **kw: Any) -> httpx.Response:
        all_headers = self._headers(token) | dict(headers or {})
        try:
            resp = self._http.request(method, url, headers=all_headers,
                                      timeout=timeout if timeout is not None else _TIMEOUT, **kw)
        except httpx.TransportError as exc:  # connect / read failures: the caller may retry
            raise TransportError(f"{method} {self.address}{url}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            err = ERROR_OF.get(resp.status_code)
            if err is not None:
                raise err(str(detail))
            if resp.status_code >= 500:
                raise TransportError(f"server error {resp.status_code}: {detail}")
            raise FedcoreError(f"HTTP {resp.status_code}: {detail}")
        return resp

    # ------------------------------------------------------------------ client operations
    def register(self, name: str, num_samples: int, *, client_id: str | None = None,
                 token: str | None = None) -> Registration:
        body = {"name": name, "num_samples": num_samples, "client_id": client_id, "token": token, "transport": self.name}
        data = self._call("POST", "/client", json=body).json()
        self.set_credentials(data["client_id"], data["token"])
        self._name = name
        return Registration(data["client_id"], data["token"], int(data["round"]))

    def fetch_global(self) -> tuple[int, bytes]:
        resp = self._call("GET", "/transmitter")
        return int(resp.headers[HEADER_ROUND]), resp.content

    def fetch_initial(self) -> tuple[int, bytes]:
        resp = self._call("GET", "/client")
        return int(resp.headers[HEADER_ROUND]), resp.content

    def signal(self, state: ClientState, *, wait_s: float = 0.0) -> Instruction:
        data = self._call("POST", "/client/signal", json={"state": state.value, "wait_s": wait_s},
                          timeout=wait_s + _POLL_MARGIN_S).json()
        return Instruction(Action(data["action"]), int(data["round"]), dict(data.get("config") or {}))

    def push_update(self, round_number: int, payload: bytes, num_samples: int, metrics: Mapping[str, float]) -> None:
        headers = {
            "Content-Type": PARAMS_MEDIA_TYPE,
            HEADER_ROUND: str(round_number),
            HEADER_SAMPLES: str(num_samples),
            HEADER_METRICS: json.dumps(dict(metrics)),
        }
        self._call("POST", f"/transmitter/{getattr(self, '_name', '')}", content=payload, headers=headers)

    def disconnect(self) -> None:
        if self.client_id:
            self._call("DELETE", f"/client/{self.client_id}")

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status").json()

    def history(self) -> list[dict[str, Any]]:
        return self._call("GET", "/history").json()

    # ------------------------------------------------------------------ round control
    def _admin(self, admin_token: str | None) -> str:
        return admin_token or self.settings.admin_token or ""

    def start_autorun(self, rounds: int, admin_token: str | None = None) -> dict[str, Any]:
        return self._call("POST", f"/client/autorun/{rounds}", token=self._admin(admin_token)).json()

    def stop_autorun(self, admin_token: str | None = None) -> dict[str, Any]:
        return self._call("DELETE", "/client/autorun", token=self._admin(admin_token)).json()

    def step(self, admin_token: str | None = None) -> dict[str, Any]:
        return self._call("POST", "/round/step", token=self._admin(admin_token)).json()

    def close(self) -> None:
        self._http.close()
