"""TLS on the wire: a round over an encrypted channel, and a client with another CA refuses the server."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedcore import wire
from fedcore.config import Settings
from fedcore.errors import TransportError
from fedcore.federation import Federation, FederationConfig
from fedcore.operations import WireOptions
from fedcore.states import Action, ClientState
from tls_util import make_ca, make_ca_and_server_cert
from transports.grpc import GrpcClientTransport, GrpcServerTransport

WIRE = {"dtype": "fp32", "codec": "none"}
CONFIG = FederationConfig(min_clients=1, wire=WireOptions("fp32", "none", None, "none"))


@pytest.fixture
def tls_grpc(tmp_path: Path):
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    fed = Federation({"w": torch.arange(8.0)}, CONFIG).start()
    server = GrpcServerTransport(fed, Settings(grpc_port=0, tls_cert=cert, tls_key=key))
    server.start()
    yield fed, server, ca
    server.stop(grace_s=0.2)
    fed.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_grpc_round_over_tls(tls_grpc, host: str) -> None:
    fed, server, ca = tls_grpc
    settings = Settings(host=host, grpc_port=server.port, tls_ca=ca)
    with GrpcClientTransport(settings.grpc_address, settings) as c:
        c.register("alice", 4)
        payload = c.fetch_global().payload
        c.signal(ClientState.READY)
        number = fed.step().round
        instr = c.signal(ClientState.READY, wait_s=2)
        assert instr.action is Action.TRAIN
        update = {"w": wire.decode_state(payload)["w"] * 2}
        c.push_update(number, wire.encode_state(update, **WIRE), 4, {})
        assert fed.wait_for_round(number, 10)
    assert torch.equal(fed.global_state["w"], torch.arange(8.0) * 2)


def test_grpc_client_with_other_ca_refuses_server(tls_grpc, tmp_path: Path) -> None:
    _, server, _ = tls_grpc
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_ca, _, _ = make_ca(other_dir, name="some other CA")
    settings = Settings(grpc_port=server.port, tls_ca=other_ca)
    with GrpcClientTransport(settings.grpc_address, settings) as c, pytest.raises(TransportError):
        c.register("mallory", 1)


def test_grpc_plaintext_client_cannot_talk_to_tls_server(tls_grpc) -> None:
    _, server, _ = tls_grpc
    settings = Settings(grpc_port=server.port)
    with GrpcClientTransport(settings.grpc_address, settings) as c, pytest.raises(TransportError):
        c.register("plain", 1)
