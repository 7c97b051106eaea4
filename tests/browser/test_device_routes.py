"""The device routes without a browser: the page or its "not built" notice, assets, demo shards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fedcore import wire
from fedcore.config import Settings
from transports.rest.routes_device import device_router, encode_shard, partition_shards


def _client(dist: Path, shards: bool = True) -> TestClient:
    app = FastAPI()
    app.include_router(device_router(partition_shards(Settings.model_validate({"num_partitions": 3})) if shards else None, dist=dist))
    return TestClient(app)


def test_unbuilt_page_says_how_to_build_it(tmp_path: Path) -> None:
    c = _client(tmp_path / "dist")
    r = c.get("/device")
    assert r.status_code == 503 and "make browser" in r.text and "not built" in r.text
    r = c.get("/device/assets/device.js")
    assert r.status_code == 404 and "make browser" in r.json()["detail"]


def test_built_page_and_assets(tmp_path: Path) -> None:
    (tmp_path / "device.js").write_text("export {};")
    (tmp_path / "zstd.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("no")
    c = _client(tmp_path)
    r = c.get("/device")
    assert r.status_code == 200 and '<script type="module" src="/device/assets/device.js">' in r.text
    assert c.get("/device/assets/device.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/device/assets/zstd.wasm").headers["content-type"] == "application/wasm"
    for bad in ("secret.txt", "..%2Fsecret.txt", "missing.js", ".hidden.js"):
        assert c.get(f"/device/assets/{bad}").status_code == 404, bad


def test_shard_is_the_partition_a_python_client_trains_on(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    c = _client(tmp_path)
    got = wire.decode_state(c.get("/device/shard/1").content)
    share = digits.clients[1].train
    assert np.array_equal(got["x"].numpy(), share.x) and np.array_equal(got["y"].numpy(), share.y)
    assert c.get("/device/shard/3").status_code == 404
    assert _client(tmp_path, shards=False).get("/device/shard/0").status_code == 404


def test_encode_shard_checks_shapes() -> None:
    with pytest.raises(ValueError, match="a shard is"):
        encode_shard(np.zeros((3, 64), np.float32), np.zeros(4, np.int64))
