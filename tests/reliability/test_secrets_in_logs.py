"""Item 7 of the reliability issue: secrets (client private keys, the S3 secret key, presigned URLs' and
requests' signatures) never appear in the server's logs or in any error a client sees, after a realistic
session with refusals of every kind, on both stores."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

import kachery_cloud as kcl
from kachery_cloud._connection import api_client, forget_clients
from kachery_cloud.api import blobs as blobs_api
from kachery_cloud.protocol.keys import private_key_hex
from kachery_cloud.protocol.request_signing import (
    HEADER_SIGNATURE,
    body_digest,
)

from ..helpers import new_identity
from ..servers import RunningServer
from .attack_kit import (
    SMALL_UPLOAD,
    TWO_PART_UPLOAD,
    Recorder,
    Secrets,
    World,
    become,
    build,
    server_logs,
    store_name,
)
from .conftest import Figure, Figures


def test_secrets_never_appear_in_logs_or_errors(
    world: World, cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    """A realistic session (register, store small and large files through presigned single and multipart URLs,
    load them back, meet several refusals), then: neither the server's logs nor any error this client saw
    contains the client's private key, the S3 secret key, a presigned URL's signature or a request's signature."""
    from kachery_cloud.config import load_config
    from kachery_cloud.identity import load_identity

    server = cloud_client
    identity = load_identity(load_config())
    assert identity is not None
    recorder = Recorder()
    recorder.attach()
    errors: list[str] = []

    def refused(error: type[Exception], call: Callable[[], Any]) -> None:
        with pytest.raises(error) as info:
            call()
        errors.append(str(info.value))

    # The session: every kind of transfer, so that single PUT, multipart part and GET URLs are handed out.
    small = tmp_path / "small.txt"
    small.write_text("a small result\n")
    medium = tmp_path / "medium.bin"
    medium.write_bytes(os.urandom(SMALL_UPLOAD))
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(TWO_PART_UPLOAD))
    uris = kcl.store_files([small, medium, large])
    kcl.set_mutable("@session/latest", uris[2])
    for uri, path in zip(uris, (small, medium, large), strict=True):
        assert kcl.load_bytes(uri, 0, 8) == path.read_bytes()[:8]
        assert Path(kcl.load_file(uri) or "").read_bytes() == path.read_bytes()
    recorder.attach()

    # Refusals: forged, stale and replayed requests; bytes that are not their blob; reads and writes outside.
    me = identity
    for request in (
        build("POST", "/api/mutables/set", {"key": "@session/latest", "value": "x"}, to=server.url, signer=me,
              nonce=secrets.token_hex(16), body_sha256=body_digest(b"other")),
        build("POST", "/api/mutables/set", {"key": "@session/latest", "value": "x"}, to=server.url, signer=me,
              timestamp_ms=1),
        build("POST", "/api/feeds", {}, to=server.url, signer=new_identity(), client_id=me.client_id),
    ):  # fmt: skip
        response = request.send(server)
        assert response.status_code == 401
        errors.append(response.text)
    replay = build("GET", "/api/clients/me", to=server.url, signer=me)
    assert replay.send(server).status_code == 200
    errors.append(replay.send(server).text)
    data = os.urandom(SMALL_UPLOAD)
    [plan] = blobs_api.need(api_client(), None, [(hashlib.sha1(data).hexdigest(), len(data))])
    url = plan.url or plan.part_urls[1]
    wrong = requests.put(url, data=os.urandom(len(data)), headers=plan.headers, timeout=30)
    errors.append(wrong.text)
    parts = None if plan.method == "put" else [(1, wrong.headers.get("ETag", ""))]
    errors += [r.message for r in blobs_api.complete(api_client(), [(plan, parts)])]
    errors.append(requests.put(url + "0", data=data, headers=plan.headers, timeout=30).text)  # a tampered URL
    # A CI secret that does not match its id, and a mistyped one: the client must not echo them.
    mistyped = private_key_hex(me.private_key)[:-1]
    for client_id, key in ((new_identity().client_id, private_key_hex(me.private_key)), (me.client_id, mistyped)):
        monkeypatch.setenv("KACHERY_CLOUD_CLIENT_ID", client_id)
        monkeypatch.setenv("KACHERY_CLOUD_PRIVATE_KEY", key)
        forget_clients()
        refused(kcl.ConfigError, lambda: kcl.store_text("with a broken secret"))
    monkeypatch.delenv("KACHERY_CLOUD_CLIENT_ID")
    monkeypatch.delenv("KACHERY_CLOUD_PRIVATE_KEY")
    forget_clients()
    monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")
    refused(kcl.EphemeralModeError, lambda: kcl.store_text("ephemeral"))
    monkeypatch.delenv("KACHERY_CLOUD_EPHEMERAL")
    forget_clients()
    recorder.attach()
    refused(kcl.ServerError, lambda: kcl.create_feed(project_id="nowhere"))
    # Another user's client, refused in this user's project.
    become(monkeypatch, world, world.outsider)
    recorder.attach()
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", "default")
    refused(kcl.ServerError, lambda: kcl.store_text("intruder"))  # a private project: "does not exist"
    refused(kcl.ServerError, lambda: kcl.get_mutable("@session/latest"))

    known = Secrets()
    known.add_private_key(me)
    known.add("private key (hex, mistyped)", mistyped)
    known.add_private_key(world.outsider.identity)
    known.add("private key (PEM file)", (Path(os.environ["KACHERY_CLOUD_DIR"]) / "private.pem").read_text().strip())
    known.add_s3_secret(server)
    for response in recorder.responses:
        for signature in re.findall(r"X-Amz-Signature=([0-9a-f]{64})", response.text):
            known.add("presigned URL signature", signature)
        known.add("request signature", response.request.headers.get(HEADER_SIGNATURE, ""))
        if response.status_code >= 400:
            errors.append(response.text)
    for text in (url, *(r.request.url or "" for r in recorder.responses)):
        for signature in re.findall(r"X-Amz-Signature=([0-9a-f]{64})", text):
            known.add("presigned URL signature", signature)
    assert known.values.get("presigned URL signature"), "the session was handed no presigned URL"
    assert len(known.values.get("request signature", ())) > 10
    # The control: the same scan over the API's answers, which do hand the URLs out, finds them.
    assert known.leaks({"API answers": "\n".join(r.text for r in recorder.responses)})
    haystacks = server_logs(server) | {f"client error {i}": text for i, text in enumerate(errors)}
    leaks = known.leaks(haystacks)
    figures.record(
        Figure(
            item="7 hostile clients: secrets in logs and errors",
            runs=len(haystacks),
            errors=len(leaks),
            details={
                "store": store_name(server),
                "secrets looked for": {kind: len(values) for kind, values in known.values.items()},
                "logs": sorted(server_logs(server)),
                "client errors": len(errors),
                "leaks": leaks,
            },
        )
    )
    assert not leaks, leaks
