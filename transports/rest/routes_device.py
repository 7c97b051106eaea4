"""The browser device: the page (/device), its built bundle (/device/assets/*) and demo shards.

The page is a fedcore client written in JavaScript (browser/): it speaks the same REST protocol
and wire format as a Python client. Its bundle is built from npm (``make browser``) into
browser/dist; without it the page says so instead of failing.

``/device/shard/{index}`` hands a partition's training data to a page for the demo and the tests
only: a real device keeps its own data (the page also reads a file the user picks), and nothing
about its data ever crosses the network.
"""
from __future__ import annotations

import functools
import html
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy
import torch
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, Response

from fedcore import wire
from fedcore.config import Settings
from fedcore.constants import PARAMS_MEDIA_TYPE

ShardProvider = Callable[[int], tuple[numpy.ndarray, numpy.ndarray]]

STATIC_DIR = Path(__file__).parent / "static"
DIST_DIR = Path(__file__).resolve().parents[2] / "browser" / "dist"
PAGE_ENTRY = "device.js"
_MEDIA = {".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css"}
_NOT_BUILT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fedcore device: not built</title>
<link rel="stylesheet" href="/static/dashboard.css"></head><body><main class="grid"><section class="card wide">
<h2>The browser device is not built</h2>
<p data-testid="not-built">Its JavaScript bundle ({where}) is missing. Build it where node and npm are installed:
<code>make browser</code> (npm ci, then an esbuild bundle), and reload this page.</p>
<p><a href="/">Back to the dashboard</a></p></section></main></body></html>"""


def is_built(dist: Path = DIST_DIR) -> bool:
    return (dist / PAGE_ENTRY).is_file()


def encode_shard(x: numpy.ndarray, y: numpy.ndarray) -> bytes:
    """A shard as a wire payload (digits: x float32 (N, 64); CIFAR-10: x uint8 (N, 32, 32, 3) pixels,
    normalised by the page as by ``fedcore.app.data``; y int64 (N,)): the page decodes it with its own codec."""
    cifar = x.dtype == numpy.uint8 and x.ndim == 4
    if (x.ndim != 2 and not cifar) or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"a shard is x (N, F) or uint8 (N, H, W, C) and y (N,), got {x.shape} and {y.shape}")
    state = {"x": torch.from_numpy(numpy.ascontiguousarray(x, numpy.uint8 if cifar else numpy.float32)),
             "y": torch.from_numpy(numpy.ascontiguousarray(y, numpy.int64))}
    return wire.encode_state(state, dtype="fp32", codec="zstd", meta={"kind": "shard"})


def partition_shards(settings: Settings) -> ShardProvider:
    """The training split of partition ``index`` of the configured data set, as the Python
    client with ``--index`` sees it (same partition, same seed). Loaded on first use."""

    @functools.lru_cache(maxsize=1)
    def federated():  # type: ignore[no-untyped-def]
        from fedcore.app.data import load_federated  # the app layer, only when a page asks

        return load_federated(settings.dataset, settings.num_partitions, partition=settings.partition,
                              alpha=settings.alpha, seed=settings.seed, data_dir=settings.data_dir)

    def provider(index: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        data = federated()
        if not 0 <= index < len(data.clients):
            raise IndexError(f"there are {len(data.clients)} partitions (0..{len(data.clients) - 1}), not {index}")
        share = data.clients[index].train
        return share.x, share.y

    return provider


def device_router(shard_provider: ShardProvider | None, dist: Path = DIST_DIR) -> APIRouter:
    """Routes of the browser device; ``shard_provider`` None turns the demo shards off."""
    router = APIRouter(tags=["device"])

    @router.get("/device", include_in_schema=False)
    def page() -> Response:
        if not is_built(dist):
            return HTMLResponse(_NOT_BUILT.format(where=html.escape(str(dist / PAGE_ENTRY))), status_code=503)
        return FileResponse(STATIC_DIR / "device.html", headers={"Cache-Control": "no-cache"})

    @router.get("/device/assets/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        path = dist / name
        if "/" in name or name.startswith(".") or path.suffix not in _MEDIA:
            raise HTTPException(status_code=404, detail=f"no asset {name!r}")
        if not path.is_file():
            if not is_built(dist):
                raise HTTPException(status_code=404, detail="the browser device is not built: run `make browser`")
            raise HTTPException(status_code=404, detail=f"no asset {name!r}")
        return FileResponse(path, media_type=_MEDIA[path.suffix], headers={"Cache-Control": "no-cache"})

    @router.get("/device/shard/{index}", summary="Demo only: a partition's training data for a browser device",
                response_class=Response, responses={200: {"content": {PARAMS_MEDIA_TYPE: {}}}})
    def shard(index: int, limit: Annotated[int | None, Query(ge=1, description="at most this many samples (the first ones)")] = None
              ) -> Response:
        if shard_provider is None:
            raise HTTPException(status_code=404, detail="this server hands out no demo shards")
        try:
            x, y = shard_provider(index)
        except IndexError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return Response(encode_shard(x, y), media_type=PARAMS_MEDIA_TYPE)

    return router


__all__ = ["ShardProvider", "device_router", "encode_shard", "is_built", "partition_shards"]
