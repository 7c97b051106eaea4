"""The four rounds of SecAgg (Bonawitz et al. 2017) with SecAgg+ neighbourhoods (Bell et al. 2020).

Pure state machines: :class:`SecAggClient` and :class:`SecAggServer` exchange typed messages and
never do I/O, so the protocol is tested without a network and a transport only carries bytes.

    0 AdvertiseKeys  client → server: two X25519 public keys (share encryption c, masking s)
                     server → clients: the KeyBook of everyone who advertised (U1)
    1 ShareKeys      client → server: Shamir shares of its s private key and self-mask seed b,
                     one AES-GCM ciphertext per neighbour (and itself)
                     server → client: the ciphertexts addressed to it, and U2 (who shared)
    2 MaskedInput    client → server: y = x + PRG(b) + Σ_{j ∈ U2 ∩ N(i)} ±PRG(s_ij)  (mod 2^32),
                     + when i < j, − when i > j, so every surviving pair cancels
                     server → clients: U3 (who sent a masked input)
    3 Unmasking      client → server: for each j it holds a share of, b_j's share when j ∈ U3,
                     s_j's share when j ∈ U2 \\ U3 (never both: that is what keeps x_j hidden)
                     server: reconstructs, removes PRG(b_i) for i ∈ U3 and the dropped pairs'
                     masks, and outputs Σ_{i ∈ U3} x_i.

Ids are positive integers (Shamir points); the round's ``session`` bytes bind every key, mask
and ciphertext to the round. The server learns only the sum, provided it follows the protocol
(honest but curious) and clients do not collude with it.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedcore.secagg import crypto, shamir
from fedcore.secagg.params import SecAggError, SecAggParams, neighbours

_PLAIN = struct.Struct(">II")


@dataclass(frozen=True)
class RoundContext:
    """The public setting of one round: its session id, the selected ids and the parameters."""

    session: bytes
    ids: tuple[int, ...]
    params: SecAggParams

    def __post_init__(self) -> None:
        if len(set(self.ids)) != len(self.ids) or any(i < 1 or i >= 1 << 31 for i in self.ids):
            raise SecAggError("secagg ids must be distinct integers in 1..2^31-1")
        if len(self.ids) < 2:
            raise SecAggError("secure aggregation needs at least 2 clients in a round")
        if not 8 <= len(self.session) <= 64:
            raise SecAggError("a secagg session id is 8..64 bytes")
        self.params.check_capacity(len(self.ids))
        self.params.threshold_for(len(self.ids))

    @property
    def threshold(self) -> int:
        return self.params.threshold_for(len(self.ids))

    @property
    def graph(self) -> dict[int, frozenset[int]]:
        return neighbours(self.ids, self.params.degree_for(len(self.ids)), self.session)


# ---------------------------------------------------------------------- messages
@dataclass(frozen=True)
class AdvertiseKeys:
    sender: int
    c_pk: bytes
    s_pk: bytes


@dataclass(frozen=True)
class KeyBook:
    keys: Mapping[int, AdvertiseKeys]  # U1


@dataclass(frozen=True)
class ShareKeys:
    sender: int
    ciphertexts: Mapping[int, bytes]  # recipient → AES-GCM(share of s_sk ‖ share of b)


@dataclass(frozen=True)
class ShareInbox:
    u2: tuple[int, ...]
    ciphertexts: Mapping[int, bytes]  # sender → ciphertext addressed to this client


@dataclass(frozen=True)
class MaskedInput:
    sender: int
    vector: np.ndarray  # uint32


@dataclass(frozen=True)
class Survivors:
    u3: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskShares:
    sender: int
    self_mask: Mapping[int, int]  # owner ∈ U3 → this client's share of b_owner
    mask_key: Mapping[int, int]  # owner ∈ U2 \ U3 → this client's share of s_sk_owner


@dataclass(frozen=True)
class Aggregate:
    """The server's output: the integer sum over ``survivors`` and who dropped when."""

    total: np.ndarray
    survivors: tuple[int, ...]
    dropped_after_sharing: tuple[int, ...]  # in U2, not in U3: their pairwise masks were removed
    dropped_before_sharing: tuple[int, ...]  # selected, not in U2: never part of any mask
    #: In U3 (their input is in the sum) but their unmasking shares never arrived: the others'
    #: shares of their self-mask seeds removed those masks.
    dropped_after_masking: tuple[int, ...] = ()


def _aad(session: bytes, sender: int, recipient: int) -> bytes:
    return crypto.PROTOCOL + b"|share|" + _PLAIN.pack(sender, recipient) + session


# ---------------------------------------------------------------------- client
@dataclass
class SecAggClient:
    """One client's side of one round. Call the stages in order; each refuses to run twice."""

    ctx: RoundContext
    me: int
    _c_sk: X25519PrivateKey = field(default_factory=crypto.new_private_key, repr=False)
    _s_sk: X25519PrivateKey = field(default_factory=crypto.new_private_key, repr=False)
    _b: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    _book: KeyBook | None = field(default=None, repr=False)
    _u2: tuple[int, ...] = ()
    _held: dict[int, tuple[int, int]] = field(default_factory=dict, repr=False)  # owner → (s share, b share)
    _stage: int = 0

    def __post_init__(self) -> None:
        if self.me not in self.ctx.ids:
            raise SecAggError(f"client {self.me} is not in this round")

    def _check(self, expected: int) -> None:
        """A stage runs once, in order; it counts as done only when it returns (a refused
        message leaves the client where it was, having revealed nothing)."""
        if self._stage != expected:
            raise SecAggError(f"secagg stage {expected} called out of order (client is at stage {self._stage})")

    def advertise(self) -> AdvertiseKeys:
        self._check(0)
        self._stage = 1
        return AdvertiseKeys(self.me, crypto.public_bytes(self._c_sk), crypto.public_bytes(self._s_sk))

    def share_keys(self, book: KeyBook) -> ShareKeys:
        self._check(1)
        t = self.ctx.threshold
        if self.me not in book.keys or len(book.keys) < t:
            raise SecAggError(f"the key book has {len(book.keys)} client(s) (need {t}, including this one)")
        if any(k not in self.ctx.ids or v.sender != k for k, v in book.keys.items()):
            raise SecAggError("the key book names clients outside the round")
        self._book = book
        recipients = sorted((self.ctx.graph[self.me] & set(book.keys)) | {self.me})
        if len(recipients) < t:
            raise SecAggError(f"client {self.me} has {len(recipients)} share holder(s) left, fewer than the threshold {t}")
        s_shares = shamir.split(crypto.private_bytes(self._s_sk), t, recipients)
        b_shares = shamir.split(self._b, t, recipients)
        out: dict[int, bytes] = {}
        for j in recipients:
            key = crypto.pair_enc_key(crypto.agree(self._c_sk, book.keys[j].c_pk), self.ctx.session, self.me, j)
            plain = _PLAIN.pack(self.me, j) + shamir.share_to_bytes(s_shares[j]) + shamir.share_to_bytes(b_shares[j])
            out[j] = crypto.seal(key, plain, _aad(self.ctx.session, self.me, j))
        self._stage = 2
        return ShareKeys(self.me, out)

    def masked_input(self, inbox: ShareInbox, x: np.ndarray) -> MaskedInput:
        """Decrypt the shares addressed to this client, then mask ``x`` (uint32, < 2^bits)."""
        self._check(2)
        assert self._book is not None
        if x.dtype != np.uint32 or x.ndim != 1:
            raise SecAggError("the input must be a 1-D uint32 vector (quantise it first)")
        if x.size and int(x.max()) > self.ctx.params.levels:
            raise SecAggError(f"input values must be below 2^{self.ctx.params.bits}")
        u2 = tuple(sorted(inbox.u2))
        if self.me not in u2 or not set(u2) <= set(self._book.keys) or len(u2) < self.ctx.threshold:
            raise SecAggError(f"U2 of {len(u2)} client(s) is not a valid subset of the key book")
        held: dict[int, tuple[int, int]] = {}
        for sender, blob in inbox.ciphertexts.items():
            if sender not in u2 or (sender != self.me and sender not in self.ctx.graph[self.me]):
                raise SecAggError(f"a share from client {sender} was not expected")
            key = crypto.pair_enc_key(crypto.agree(self._c_sk, self._book.keys[sender].c_pk), self.ctx.session,
                                      sender, self.me)
            plain = crypto.open_sealed(key, blob, _aad(self.ctx.session, sender, self.me))
            if len(plain) != _PLAIN.size + 2 * shamir.SHARE_BYTES or _PLAIN.unpack_from(plain) != (sender, self.me):
                raise crypto.ShareDecryptionError(f"the share from client {sender} is not addressed to client {self.me}")
            body = plain[_PLAIN.size:]
            held[sender] = (shamir.share_from_bytes(body[:shamir.SHARE_BYTES]),
                                  shamir.share_from_bytes(body[shamir.SHARE_BYTES:]))
        self._u2, self._held = u2, held
        y = x + crypto.prg_uint32(self._b, x.size)
        for j in sorted(set(u2) & self.ctx.graph[self.me]):
            seed = crypto.pair_mask_seed(crypto.agree(self._s_sk, self._book.keys[j].s_pk), self.ctx.session, self.me, j)
            mask = crypto.prg_uint32(seed, x.size)
            if self.me < j:
                y += mask
            else:
                y -= mask
        self._stage = 3
        return MaskedInput(self.me, y)

    def unmask(self, survivors: Survivors) -> UnmaskShares:
        """Reveal b-shares of survivors and s-shares of clients that dropped after sharing."""
        self._check(3)
        u3 = set(survivors.u3)
        if self.me not in u3 or not u3 <= set(self._u2):
            raise SecAggError("the survivor list is not a subset of U2 that includes this client")
        if len(u3) < self.ctx.threshold:
            raise SecAggError(f"only {len(u3)} survivor(s); the threshold is {self.ctx.threshold}: refusing to unmask")
        self_mask = {o: b for o, (_, b) in self._held.items() if o in u3}
        mask_key = {o: s for o, (s, _) in self._held.items() if o not in u3 and o in self._u2}
        self._stage = 4
        return UnmaskShares(self.me, self_mask, mask_key)


# ---------------------------------------------------------------------- server
@dataclass
class SecAggServer:
    """The server's side of one round: it routes messages and, at the end, outputs the sum."""

    ctx: RoundContext
    length: int  # the number of coordinates every input has
    _keys: dict[int, AdvertiseKeys] = field(default_factory=dict)
    _shares: dict[int, Mapping[int, bytes]] = field(default_factory=dict)
    _masked: dict[int, np.ndarray] = field(default_factory=dict)
    _unmask: dict[int, UnmaskShares] = field(default_factory=dict)
    stage: int = 0  # 0 collecting keys, 1 shares, 2 masked inputs, 3 unmask shares, 4 done

    def _expect(self, stage: int, sender: int, allowed: Sequence[int] | set[int]) -> None:
        if self.stage != stage:
            raise SecAggError(f"the round is at secagg stage {self.stage}, not {stage}")
        if sender not in allowed:
            raise SecAggError(f"client {sender} is not a participant of secagg stage {stage}")

    # stage 0
    def receive_keys(self, msg: AdvertiseKeys) -> None:
        self._expect(0, msg.sender, self.ctx.ids)
        if len(msg.c_pk) != 32 or len(msg.s_pk) != 32 or msg.c_pk == msg.s_pk:
            raise SecAggError("advertised keys must be two distinct 32-byte X25519 public keys")
        if msg.sender in self._keys:
            raise SecAggError(f"client {msg.sender} already advertised its keys")
        self._keys[msg.sender] = msg

    def key_book(self) -> KeyBook:
        """Close stage 0: the clients who advertised (U1)."""
        if self.stage == 0:
            self._need(len(self._keys), "advertised keys")
            self.stage = 1
        return KeyBook(dict(self._keys))

    # stage 1
    def receive_shares(self, msg: ShareKeys) -> None:
        self._expect(1, msg.sender, set(self._keys))
        if msg.sender in self._shares:
            raise SecAggError(f"client {msg.sender} already sent its shares")
        expected = (self.ctx.graph[msg.sender] & set(self._keys)) | {msg.sender}
        if set(msg.ciphertexts) != expected:
            raise SecAggError(f"client {msg.sender} sent shares for the wrong recipients")
        self._shares[msg.sender] = dict(msg.ciphertexts)

    def close_shares(self) -> tuple[int, ...]:
        """Close stage 1: U2."""
        if self.stage == 1:
            self._need(len(self._shares), "shared their keys")
            self.stage = 2
        return tuple(sorted(self._shares))

    def inbox_for(self, j: int) -> ShareInbox:
        if self.stage < 2 or j not in self._shares:
            raise SecAggError(f"no share inbox for client {j} (stage {self.stage})")
        return ShareInbox(tuple(sorted(self._shares)),
                          {i: cts[j] for i, cts in self._shares.items() if j in cts})

    # stage 2
    def receive_masked(self, msg: MaskedInput) -> None:
        self._expect(2, msg.sender, set(self._shares))
        if msg.sender in self._masked:
            raise SecAggError(f"client {msg.sender} already sent its masked input")
        if msg.vector.dtype != np.uint32 or msg.vector.shape != (self.length,):
            raise SecAggError(f"a masked input must be {self.length} uint32 values")
        self._masked[msg.sender] = msg.vector

    def survivors(self) -> Survivors:
        """Close stage 2: U3 (refused when fewer than the threshold are left)."""
        if self.stage == 2:
            self._need(len(self._masked), "sent masked inputs")
            self.stage = 3
        return Survivors(tuple(sorted(self._masked)))

    # stage 3
    def receive_unmask(self, msg: UnmaskShares) -> None:
        self._expect(3, msg.sender, set(self._masked))
        if msg.sender in self._unmask:
            raise SecAggError(f"client {msg.sender} already sent its unmasking shares")
        u3, u2 = set(self._masked), set(self._shares)
        if set(msg.self_mask) & set(msg.mask_key) or not set(msg.self_mask) <= u3 or not set(msg.mask_key) <= u2 - u3:
            raise SecAggError(f"client {msg.sender} sent unmasking shares for the wrong clients")
        self._unmask[msg.sender] = msg

    def finish(self) -> Aggregate:
        """Reconstruct the secrets needed and output Σ_{i ∈ U3} x_i mod 2^32."""
        if self.stage != 3:
            raise SecAggError(f"the round is at secagg stage {self.stage}; it cannot be unmasked yet")
        t = self.ctx.threshold
        u2, u3 = set(self._shares), set(self._masked)
        dropped = sorted(u2 - u3)
        graph = self.ctx.graph
        total = np.zeros(self.length, dtype=np.uint32)
        for y in self._masked.values():
            total += y
        for i in sorted(u3):
            b = shamir.combine(self._collect(i, "self-mask seed", lambda m: m.self_mask), t)
            total -= crypto.prg_uint32(b, self.length)
        for j in dropped:
            s_bytes = shamir.combine(self._collect(j, "mask key", lambda m: m.mask_key), t)
            s_sk = X25519PrivateKey.from_private_bytes(s_bytes)
            if crypto.public_bytes(s_sk) != self._keys[j].s_pk:
                raise SecAggError(f"the shares of client {j}'s mask key are inconsistent with its public key")
            for i in sorted(graph[j] & u3):
                seed = crypto.pair_mask_seed(crypto.agree(s_sk, self._keys[i].s_pk), self.ctx.session, i, j)
                mask = crypto.prg_uint32(seed, self.length)
                if i < j:
                    total -= mask
                else:
                    total += mask
        self.stage = 4
        return Aggregate(total, tuple(sorted(u3)), tuple(dropped), tuple(sorted(set(self.ctx.ids) - u2)),
                         tuple(sorted(u3 - set(self._unmask))))

    def _collect(self, owner: int, what: str, pick: Callable[[UnmaskShares], Mapping[int, int]]) -> dict[int, int]:
        shares: dict[int, int] = {}
        for sender, msg in self._unmask.items():
            got = pick(msg)
            if owner in got:
                shares[sender] = got[owner]
        if len(shares) < self.ctx.threshold:
            raise SecAggError(f"too many drop-outs: {len(shares)} share(s) of client {owner}'s {what} arrived, "
                              f"{self.ctx.threshold} are needed")
        return shares

    def _need(self, count: int, what: str) -> None:
        if count < self.ctx.threshold:
            raise SecAggError(f"too many drop-outs: {count} client(s) {what}, the threshold is {self.ctx.threshold}")
