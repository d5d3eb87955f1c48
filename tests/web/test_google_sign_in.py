"""Signing in to the web app with Google, where the server is configured for it. Google's page script cannot
load here (no internet), so the test hands the form the ID token that script would, signed by the stand-in
for Google's key (tests/google_kit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ..google_kit import GOOGLE_CLIENT_ID, FakeGoogleKeys
from ..servers import RunningServer, start_server
from .web_kit import shoot


@pytest.fixture(scope="module")
def google_lab(
    tmp_path_factory: pytest.TempPathFactory, google_keys: tuple[FakeGoogleKeys, str]
) -> Iterator[RunningServer]:
    settings = {"google_client_id": GOOGLE_CLIENT_ID, "google_certs_url": google_keys[1]}
    server = start_server(tmp_path_factory.mktemp("web-google"), settings=settings)
    yield server
    server.stop()


def _google_form(context: Any, server: RunningServer, credential: str) -> Any:
    page = context.new_page()
    page.route("https://accounts.google.com/**", lambda route: route.abort())
    page.goto(f"{server.url}/")
    page.evaluate("c => { document.getElementById('google-credential').value = c; }", credential)
    with page.expect_response(f"{server.url}/sign-in/google") as answer:
        page.evaluate("document.getElementById('google-form').submit()")
    page.wait_for_load_state()
    return page, answer.value


def test_google_sign_in_makes_a_session_for_that_person(
    google_lab: RunningServer, google_keys: tuple[FakeGoogleKeys, str], new_browser: Any
) -> None:
    keys, _ = google_keys
    page, answer = _google_form(new_browser(), google_lab, keys.id_token())
    assert answer.status == 303
    assert page.inner_text("#signed-in-as") == "alice@example.org"
    assert "personal project of alice@example.org" in page.inner_text("#projects")
    shoot(page, "google-signed-in")


@pytest.mark.parametrize(
    "claims", [{"aud": "someone-else.apps.googleusercontent.com"}, {"email_verified": False}, {"exp": 1}]
)
def test_a_bad_google_token_signs_nobody_in(
    google_lab: RunningServer, google_keys: tuple[FakeGoogleKeys, str], new_browser: Any, claims: dict
) -> None:
    keys, _ = google_keys
    page, answer = _google_form(new_browser(), google_lab, keys.id_token(sub="666", email="eve@example.org", **claims))
    assert answer.status == 401
    assert page.locator("#signed-in-as").count() == 0
    assert "eve" not in google_lab.admin("list-users", "--json").stdout
