"""Ed25519 keys for bundles: PKCS#8 PEM private keys, SubjectPublicKeyInfo PEM public keys.

The public key's DER is the 12-byte Ed25519 SPKI prefix followed by the 32 raw key bytes, so
the JDK (X509EncodedKeySpec) and CryptoKit (rawRepresentation of the last 32 bytes) read it as is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import LoragenError
from ..fsutil import atomic_file


def generate_keypair(out_private: str | os.PathLike, out_public: str | os.PathLike) -> str:
    """Write a new key pair (private file mode 0600); return the public key id."""
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with atomic_file(out_private) as tmp_priv, atomic_file(out_public) as tmp_pub:
        os.chmod(tmp_priv, 0o600)  # before the secret is written
        tmp_priv.write_bytes(priv)
        tmp_pub.write_bytes(pub)
    return key_id(key.public_key())


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of the sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    p = Path(path)
    if not p.is_file():
        raise LoragenError(f"signing key {p} does not exist")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise LoragenError(f"{p} is not an unencrypted PEM private key: {str(e).splitlines()[0]}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LoragenError(f"{p} is not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    p = Path(path)
    if not p.is_file():
        raise LoragenError(f"public key {p} does not exist")
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except (ValueError, TypeError) as e:
        raise LoragenError(f"{p} is not a PEM public key: {str(e).splitlines()[0]}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LoragenError(f"{p} is not an Ed25519 public key")
    return key
