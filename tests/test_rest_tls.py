"""REST over TLS: a round over https, and a client that does not trust the server's CA refuses it."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Harness, make_settings, wait_until
from fedcore.errors import TransportError
from fedcore.transport import get_transport
from tls_util import make_ca_and_server_cert

pytestmark = pytest.mark.timeout(120)


def test_rest_round_over_tls(harness: Harness, tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    srv = harness.server(make_settings("rest", tls_cert=cert, tls_key=key, tls_ca=ca), stop_when_done=True)
    assert srv.client_settings().rest_url.startswith("https://")
    harness.client(srv, "a", 0, transport="rest")
    harness.client(srv, "b", 1, transport="rest")
    wait_until(lambda: srv.federation.status().ready == 2, what="2 clients over TLS")
    srv.federation.start_autorun(1)
    assert srv.federation.wait_for_round(1, 60)
    assert sorted(srv.federation.history()[0].participants) == ["a", "b"]


def test_rest_client_refuses_untrusted_server(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "other").mkdir()
    _, cert, key = make_ca_and_server_cert(tmp_path / "server")
    other_ca, _, _ = make_ca_and_server_cert(tmp_path / "other")
    srv = harness.server(make_settings("rest", tls_cert=cert, tls_key=key))
    cs = srv.client_settings(tls_ca=other_ca)
    client = get_transport("rest").client(cs.rest_url, cs)
    try:
        with pytest.raises(TransportError, match="(?i)certificate"):
            client.register("mallory-victim", 1)
    finally:
        client.close()
    assert srv.federation.clients() == []
