"""The cryptographic primitives of the protocol, all from ``cryptography``.

- X25519 key agreement, HKDF-SHA256 to turn a shared secret into a per-purpose 32-byte key
  (the info string binds the protocol version, the round's session id, the purpose and the pair).
- AES-256-GCM to encrypt Shamir shares to their recipient (the server routes them and cannot
  read or alter them undetected).
- The mask PRG is the AES-256-CTR keystream under the 32-byte seed, read as little-endian uint32.
  Why AES-CTR rather than numpy's PCG64/Philox: a mask must be unpredictable to the server, and
  PCG64's state can be recovered from a few outputs; AES-CTR is a cryptographic PRG and, with
  AES-NI, expands a 400 kB mask in well under a millisecond.
"""
from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PROTOCOL = b"fedcore-secagg/v1"
NONCE_BYTES = 12


class ShareDecryptionError(ValueError):
    """An encrypted share failed authentication: forged, altered, or addressed to someone else."""


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(sk: X25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(sk: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    return sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def agree(sk: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The X25519 shared secret with a peer's raw 32-byte public key."""
    if len(peer_public) != 32:
        raise ValueError("an X25519 public key is 32 bytes")
    return sk.exchange(X25519PublicKey.from_public_bytes(peer_public))


def kdf(secret: bytes, session: bytes, purpose: bytes, a: int, b: int) -> bytes:
    """HKDF-SHA256 → 32 bytes bound to (protocol, session, purpose, ordered pair)."""
    info = PROTOCOL + b"|" + purpose + b"|" + struct.pack(">II", a, b) + session
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def pair_mask_seed(shared: bytes, session: bytes, i: int, j: int) -> bytes:
    """The seed of the mask clients i and j add with opposite signs (same for both)."""
    return kdf(shared, session, b"mask", min(i, j), max(i, j))


def pair_enc_key(shared: bytes, session: bytes, i: int, j: int) -> bytes:
    return kdf(shared, session, b"enc", min(i, j), max(i, j))


def prg_uint32(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random uint32 (AES-256-CTR keystream under ``seed``, zero IV: each seed
    is derived for one purpose in one round, so a key/IV pair is never reused)."""
    if len(seed) != 32:
        raise ValueError("a PRG seed is 32 bytes")
    enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    stream = enc.update(bytes(4 * length)) + enc.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32, copy=False)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + 16:
        raise ShareDecryptionError("encrypted share is too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise ShareDecryptionError("encrypted share failed authentication (forged, altered or misrouted)") from None
