"""The global model: its tensors, its encoded bytes (encoded once per round, served to every
client on every transport), the reference an int8 update is relative to, and its checkpoint.
Torch tensors or numpy arrays (``fedcore.arrays``): updates decode into the model's own kind."""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedcore import arrays, wire
from fedcore.arrays import Array
from fedcore.checkpoint import load_checkpoint, save_checkpoint, save_state
from fedcore.errors import PayloadError
from fedcore.operations import WireOptions

StateDict = Mapping[str, Array]


class GlobalModel:
    """Not thread-safe by itself: the Federation publishes a new version under its lock. The
    one exception is :meth:`reference`, which upload threads call outside that lock."""

    def __init__(self, initial_state: StateDict, options: WireOptions, max_decoded_bytes: int,
                 checkpoint_dir: Path | None) -> None:
        self.state: dict[str, Array] = arrays.clone_state(initial_state)
        self.kind = arrays.kind_of(self.state)
        self.spec = wire.spec_of(self.state)
        self.options = options
        self.max_decoded_bytes = max_decoded_bytes
        self.checkpoint_dir = checkpoint_dir
        self.version = 0  # completed rounds
        self.payload = b""
        self._reference: dict[str, Array] | None = None
        self._reference_lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the model's tensors as the server holds them (the decode bound of an update)."""
        return sum(arrays.nbytes(t) for t in self.state.values())

    def encode(self) -> None:
        """Encode the current version once; every fetch serves these bytes."""
        o = self.options
        self.payload = wire.encode_state(self.state, dtype=o.dtype, codec=o.codec, level=o.level, filter=o.filter,
                                         meta={"round": self.version}, framed=o.framing == "blocks")
        self._reference = None

    def reference(self) -> dict[str, Array]:
        """What clients received (the cast model): an int8 update is relative to exactly that.
        Decoded once per version: every upload of a round opens its decoder at once, and
        without the lock each decoded its own copy (10 clients: +380 MB of server RSS). Kept
        in the wire dtype (``as_sent``: bf16 is half of float32); dequantisation widens it
        exactly, one tensor at a time."""
        with self._reference_lock:
            if self._reference is None:
                self._reference = wire.decode_state(self.payload, max_size=self.max_decoded_bytes, as_sent=True,
                                                    into=self.kind)
            return self._reference

    def update_decoder(self) -> wire.StreamDecoder:
        """A decoder for one client's update (whole or block-framed), checked against this
        model's names, shapes and dtypes as soon as its header is in. The header's kind must
        be what the server announced."""
        expected_kind = "delta" if self.options.update == "q8" else "weights"

        def check_kind(header: wire.AnyHeader) -> None:
            if header.kind != expected_kind:
                raise PayloadError(
                    f"this server expects {expected_kind!r} payloads (wire update mode {self.options.update!r}), "
                    f"got {header.kind!r}: use the wire options from the registration reply"
                )

        reference = self.reference() if expected_kind == "delta" else None
        bound = min(self.max_decoded_bytes, max(4 * self.nbytes, 1 << 20))
        return wire.StreamDecoder(max_size=bound, reference=reference, expected=self.spec,
                                  as_sent=expected_kind == "weights" and self.kind == "torch",  # numpy: no bf16
                                  on_header=check_kind, into=self.kind)

    def decode_update(self, payload: bytes | bytearray | memoryview) -> dict[str, Array]:
        """A whole update at once (see :meth:`update_decoder`)."""
        dec = self.update_decoder()
        dec.feed(payload)
        return dec.finish()

    def publish(self, new_state: dict[str, Array], version: int) -> None:
        self.state = new_state
        self.version = version
        self.encode()

    # ------------------------------------------------------------------ persistence
    def save(self, state: Callable[[], Mapping[str, Any]]) -> None:
        """Model + federation state, after a round closes. ``state`` is called only when there
        is a checkpoint to write (the history as JSON costs ~0.1 s a round at 1,000 clients)."""
        if self.checkpoint_dir is not None:
            save_checkpoint(self.checkpoint_dir, self.state, {**state(), "round": self.version})

    def save_state_only(self, state: Callable[[], Mapping[str, Any]]) -> None:
        """Federation state alone (autorun target, stop, kicks) between round closes."""
        if self.checkpoint_dir is None:
            return
        if not save_state(self.checkpoint_dir, {**state(), "round": self.version}):
            self.save(state)  # nothing saved yet: write the model too

    def load(self) -> dict[str, Any] | None:
        if self.checkpoint_dir is None:
            return None
        loaded = load_checkpoint(self.checkpoint_dir, expected=self.spec, into=self.kind)
        if loaded is None:
            return None
        model, state = loaded
        self.state = model
        self.version = int(state["round"])
        return state
