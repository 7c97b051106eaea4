"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 − 1).

Why this field: a 32-byte secret (an X25519 private key, a self-mask seed) is an integer below
2^256, and 2^521 − 1 is a Mersenne prime above it, so a secret is one field element and a share
one 66-byte element. No maintained Python library for this was in the package mirror, so it is
written here, small (Lagrange interpolation at 0) and tested against the definition.

``threshold`` shares reconstruct the secret; ``threshold − 1`` shares are consistent with every
secret (the polynomial has degree ``threshold − 1``) and are refused.
"""
from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shares of ``secret`` for the non-zero points ``xs`` (any ``threshold`` reconstruct it)."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, not {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in 1..{len(xs)} (the number of shares), not {threshold}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and non-zero")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out: dict[int, int] = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out[x] = y
    return out


def combine(shares: Mapping[int, int], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (the first ``threshold`` by point are used)."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} share(s) cannot reconstruct a secret shared with threshold {threshold}")
    points = sorted(shares)[:threshold]
    secret = 0
    for xi in points:
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + shares[xi] * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ValueError("shares are inconsistent: the reconstructed value is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(b: bytes) -> int:
    y = int.from_bytes(b, "big")
    if len(b) != SHARE_BYTES or y >= PRIME:
        raise ValueError("malformed share")
    return y
