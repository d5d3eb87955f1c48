"""Layer 4: this client's Ed25519 identity and the signing of API requests.

The client id is the hex of the raw 32-byte public key. The key pair lives in ``$KACHERY_CLOUD_DIR`` as
``private.pem`` (PKCS#8, mode 0600, or 0640 in multiuser mode where a lab shares one identity) and
``public.pem``; it is generated on first need. CI machines can instead pass ``KACHERY_CLOUD_CLIENT_ID`` and
``KACHERY_CLOUD_PRIVATE_KEY`` (64 hex digits of the private key seed, or the PEM text).

In a shared directory the lab's key is made by the directory's owner (``kachery-cloud multiuser init``), and
used only if it is a regular file of that owner's (or root's, or the reader's own) that no one else may write:
whoever could replace it would have every member sign as a client of their choosing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ENV_CLIENT_ID, ENV_PRIVATE_KEY, ClientConfig
from .errors import ConfigError, LocalFileError
from .local.fs import Permissions, atomic_write, create_locked_temp
from .protocol.keys import client_id_of, generate_private_key, parse_private_key
from .protocol.request_signing import (
    HEADER_CLIENT_ID,
    HEADER_NONCE,
    HEADER_SERVER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    body_digest,
    signing_message,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PRIVATE_KEY_FILE = "private.pem"
PUBLIC_KEY_FILE = "public.pem"


@dataclass(frozen=True)
class ClientIdentity:
    """A private key and the client id it implies."""

    client_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def sign(self, message: bytes) -> str:
        return self.private_key.sign(message).hex()

    def signed_headers(self, method: str, target: str, body: bytes, server_id: str) -> dict[str, str]:
        """The headers that authenticate one request to the server ``server_id`` (see
        :mod:`kachery_cloud.protocol.request_signing`)."""
        timestamp_ms = int(time.time() * 1000)
        nonce = secrets.token_hex(16)
        message = signing_message(
            server_id=server_id,
            method=method,
            target=target,
            body_sha256=body_digest(body),
            timestamp_ms=timestamp_ms,
            nonce=nonce,
            client_id=self.client_id,
        )
        return {
            HEADER_CLIENT_ID: self.client_id,
            HEADER_TIMESTAMP: str(timestamp_ms),
            HEADER_NONCE: nonce,
            HEADER_SERVER_ID: server_id,
            HEADER_SIGNATURE: self.sign(message),
        }


def load_identity(config: ClientConfig, *, create: bool = True) -> ClientIdentity | None:
    """This client's identity: from the environment, else the key files, else (``create``) a new key pair."""
    if config.env_client_id or config.env_private_key:
        return _identity_from_env(config)
    path = config.dir / PRIVATE_KEY_FILE
    perms = Permissions(config.multiuser, config.dir)
    key = _read_private_key_file(path, perms)
    if key is None:
        if not create:
            return None
        if perms.tree is not None and perms.tree.uid not in (perms.tree.admin_uid, 0):
            raise ConfigError(
                f"this shared directory ({config.dir}) has no client key yet, and a member's own would not be "
                "trusted by the others: its owner makes the lab's key with `kachery-cloud multiuser init "
                f"{config.dir} --group GROUP`"
            )
        key = _create_key_files(config)
    return ClientIdentity(client_id=client_id_of(key), private_key=key)


def _identity_from_env(config: ClientConfig) -> ClientIdentity:
    if not (config.env_client_id and config.env_private_key):
        missing = ENV_PRIVATE_KEY if config.env_client_id else ENV_CLIENT_ID
        raise ConfigError(f"{ENV_CLIENT_ID} and {ENV_PRIVATE_KEY} must be set together; {missing} is missing")
    try:
        key = parse_private_key(config.env_private_key)
    except ValueError:
        # Never echo the value: it is a secret.
        raise ConfigError(
            f"{ENV_PRIVATE_KEY} is not an Ed25519 private key (expected 64 hex digits or PEM text)"
        ) from None
    client_id = client_id_of(key)
    if client_id != config.env_client_id.lower():
        raise ConfigError(
            f"{ENV_CLIENT_ID}={config.env_client_id} does not match {ENV_PRIVATE_KEY}, whose client id is {client_id}"
        )
    return ClientIdentity(client_id=client_id, private_key=key)


def _read_private_key_file(path: Path, perms: Permissions | None = None) -> Ed25519PrivateKey | None:
    try:
        text = _read_key_text(path, perms)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise LocalFileError(
            f"cannot read the client key {path}: permission denied (in a shared lab directory, set "
            "'multiuser: true' in config.yaml and ask its owner to make the key group-readable)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise LocalFileError(f"cannot read the client key {path}: {e}") from None
    try:
        return parse_private_key(text)
    except ValueError:
        raise ConfigError(f"{path} is not an Ed25519 private key in PEM form; move it away to make a new one") from None


def _read_key_text(path: Path, perms: Permissions | None) -> str:
    tree = perms.tree if perms is not None else None
    if tree is None:
        return path.read_text(encoding="ascii")
    found = tree.read(path)
    if found is None:
        raise FileNotFoundError(path)
    data, st = found
    if st.st_uid not in tree.trusted_uids or st.st_mode & 0o022 or st.st_nlink != 1:
        raise ConfigError(
            f"the client key {path} of this shared directory belongs to {tree.owner_name(st)} (not to you, to the "
            "directory's owner or to root) or may be changed by others, so it is not used: whoever can change it "
            "could make every member sign as a client of their choosing. Ask the directory's owner to run "
            "`kachery-cloud multiuser init` on it"
        )
    return data.decode("ascii")


def _create_key_files(config: ClientConfig) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    perms = Permissions(config.multiuser, config.dir)
    key = generate_private_key()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    with perms.directory(config.dir, create=True) as (dir_fd, _):
        # Written under a temp name, then hard-linked into place: link fails if another process got there
        # first, and then its key wins, so concurrent first uses agree on one identity.
        # Locked until linked, so that another process's sweep of leftovers in this directory leaves it alone.
        temp, fd = create_locked_temp(config.dir, PRIVATE_KEY_FILE, 0o600, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o640 if config.multiuser else 0o600)
            if config.multiuser:
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, -1, os.fstat(dir_fd).st_gid)
            os.write(fd, private_pem)
            os.fsync(fd)
            try:
                os.link(temp.name, PRIVATE_KEY_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                existing = _read_private_key_file(config.dir / PRIVATE_KEY_FILE, perms)
                if existing is None:
                    raise
                key = existing
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp.name, dir_fd=dir_fd)
            os.close(fd)  # releases the lock, after the link
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    public_path = config.dir / PUBLIC_KEY_FILE
    if not public_path.exists():
        with atomic_write(public_path, perms, overwrite=False) as f:
            f.write(public_pem)
    return key
