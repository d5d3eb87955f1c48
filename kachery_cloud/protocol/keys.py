"""Layer 2: Ed25519 keys as kachery-cloud writes them (pure, no I/O; the server uses it too).

The client id is the hex of the raw 32-byte public key; ``KACHERY_CLOUD_PRIVATE_KEY`` holds the hex of the
32-byte private seed, or PEM text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def client_id_of(private_key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def generate_private_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def private_key_hex(private_key: Ed25519PrivateKey) -> str:
    """The 32-byte seed as hex: the form ``KACHERY_CLOUD_PRIVATE_KEY`` takes."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


def parse_private_key(text: str) -> Ed25519PrivateKey:
    """A private key from 64 hex digits or PEM text; raises ``ValueError`` if it is neither."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    text = text.strip()
    if len(text) == 64:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    key = load_pem_private_key(text.replace("\\n", "\n").encode("ascii"), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 key")
    return key
