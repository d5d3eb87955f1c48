"""Signing in to the web app, and what a stranger sees: sign-in links work once, sessions end at sign-out, a
private project answers a stranger exactly as a missing one does, a public one is readable by anyone."""

from __future__ import annotations

import sqlite3
from typing import Any

import requests

from .web_kit import shoot, sign_in, web_login


def test_a_sign_in_link_works_once(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    link = web_login(server)
    page = new_browser().new_page()
    page.goto(link)
    assert page.inner_text("#sign-in-user").endswith("@localhost")
    shoot(page, "sign-in")
    page.goto(link)  # looking again does not use it up
    page.click("#sign-in-button")
    page.wait_for_url(f"{server.url}/")
    assert page.inner_text("#signed-in-as").endswith("@localhost")

    # The same link in another browser: refused, and that browser is not signed in.
    other = new_browser().new_page()
    answer = other.goto(link)
    assert answer is not None and answer.status == 409
    assert "already used" in other.inner_text("#error-message")
    assert other.locator("#sign-in-button").count() == 0
    shoot(other, "sign-in-used")
    # Replaying the form itself (token and all, from the first browser's page) does not work either.
    session = requests.Session()
    form_page = session.get(f"{server.url}/")
    token = session.cookies.get("kachery_csrf")
    assert form_page.ok and token
    form = {"csrftoken": token, "token": link.rsplit("/", 1)[1]}
    replay = session.post(f"{server.url}/sign-in", data=form, headers={"Origin": server.url})
    assert replay.status_code == 409
    # Without the Origin (or Referer) a browser always sends with a form, the server takes no form at all.
    assert session.post(f"{server.url}/sign-in", data=form).status_code == 403
    assert session.get(f"{server.url}/clients").status_code == 401


def test_unknown_and_expired_links_sign_nobody_in(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    page = new_browser().new_page()
    link = web_login(server)
    answer = page.goto(link[:-4] + "AAAA")
    assert answer is not None and answer.status == 404
    assert page.locator("#sign-in-button").count() == 0
    # Fifteen minutes later (the default lifetime), as the database sees it.
    with sqlite3.connect(server.data_dir / "server.db") as db:
        db.execute("UPDATE sign_in_links SET expires_at_ms = 1 WHERE used_at_ms IS NULL")
    answer = page.goto(link)
    assert answer is not None and answer.status == 410
    assert "expired" in page.inner_text("#error-message")
    assert server.admin("web-login", "--expires", "30s", check=False).returncode != 0  # under a minute


def test_sign_out_ends_the_session_everywhere(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    context = new_browser()
    page = sign_in(context, server)
    cookies = {c["name"]: c for c in context.cookies()}
    session_cookie = cookies["kachery_session"]
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Lax"
    assert not session_cookie["secure"]  # plain http here; Secure where the public URL is https
    page.click("text=Sign out")
    page.wait_for_url(f"{server.url}/")
    assert page.locator("#signed-in-as").count() == 0
    # The cookie from before sign-out, replayed by someone who copied it, is worth nothing.
    stolen = requests.get(f"{server.url}/clients", cookies={"kachery_session": session_cookie["value"]})
    assert stolen.status_code == 401
    assert "sign in" in stolen.text.lower()


def test_a_stranger_sees_a_private_project_as_a_missing_one(lab: Any, new_browser: Any) -> None:
    server, made, _ = lab
    page = new_browser().new_page()
    pages = {}
    for project in ("lab", "no-such-project"):
        for tab in ("", "/usage", "/blobs", "/mutables", "/feeds", "/tasks"):
            answer = page.goto(f"{server.url}/projects/{project}{tab}")
            assert answer is not None
            pages[project, tab] = (answer.status, page.inner_text("main").replace(project, "<id>"))
    for tab in ("", "/usage", "/blobs", "/mutables", "/feeds", "/tasks"):
        assert pages["lab", tab] == pages["no-such-project", tab], tab
        assert pages["lab", tab][0] == 404
    shoot(page, "stranger-private")
    sha1 = made["text_uri"].split("://")[1].split("?")[0]
    assert page.goto(f"{server.url}/projects/lab/blobs/{sha1}").status == 404
    assert page.goto(f"{server.url}/projects/lab/feeds/{made['feed_id']}").status == 404
    assert page.goto(f"{server.url}/projects/lab/tasks/{made['tasks']['test.add']}").status == 404
    for path in ("/clients", "/projects/lab/settings"):
        answer = page.goto(f"{server.url}{path}")
        assert answer is not None and answer.status == 401
        assert "admin web-login" in page.inner_text("main")


def test_a_public_project_is_readable_anonymously_but_not_changeable(lab: Any, new_browser: Any) -> None:
    server, made, _ = lab
    page = new_browser().new_page()
    answer = page.goto(f"{server.url}/projects/open-data")
    assert answer is not None and answer.status == 200
    assert "public: anyone may read" in page.inner_text("main")
    assert page.locator("#members").count() == 0  # who the members are is for members
    page.goto(f"{server.url}/projects/open-data/blobs")
    sha1 = made["public_uri"].split("://")[1].split("?")[0]
    assert sha1 in page.inner_text("#blobs")
    shoot(page, "public-project")
    assert page.goto(f"{server.url}/projects/open-data/settings").status == 401


def test_a_member_sees_the_project_but_not_its_admin_forms(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    server.admin("create-user", "reader-rita")
    server.admin("add-member", "lab", "reader-rita", "--role", "read")
    refused = server.admin("web-login", "--user", "reader-rita", check=False)
    assert refused.returncode != 0 and "admin of no project" in refused.stderr + refused.stdout
    server.admin("create-project", "rita-own", "--owner", "reader-rita")
    page = sign_in(new_browser(), server, "--user", "reader-rita")
    page.goto(f"{server.url}/projects/lab")
    assert page.inner_text("#your-role") == "read"
    assert page.locator("#add-member").count() == 0 and page.locator("text=Settings").count() == 0
    assert page.goto(f"{server.url}/projects/lab/settings").status == 403
    # Sending the admin forms herself, with her session and a good form token (the sign-out form's), is refused.
    page.goto(f"{server.url}/projects/lab")
    token = page.eval_on_selector("input[name=csrftoken]", "e => e.value")
    for path, form in (
        ("members", {"who": "reader-rita", "role": "admin"}),
        ("settings", {"visibility": "public"}),
        ("invitations", {"role": "admin"}),
    ):
        answer = page.request.post(f"{server.url}/projects/lab/{path}", form={"csrftoken": token, **form})
        assert answer.status == 403, (path, answer.status)
    listed = server.admin("list-projects", "--json").stdout
    assert '"reader-rita": "read"' in listed and '"public_read": false' in listed.split('"lab"')[1][:300]


def test_removing_a_user_ends_their_sessions(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    server.admin("create-user", "leaving-lee")
    server.admin("create-user", "heir-hana")
    server.admin("create-project", "lee-project", "--owner", "leaving-lee")
    page = sign_in(new_browser(), server, "--user", "leaving-lee")
    assert page.inner_text("#signed-in-as") == "leaving-lee"
    server.admin("remove-user", "leaving-lee", "--give-projects-to", "heir-hana")
    answer = page.goto(f"{server.url}/clients")
    assert answer is not None and answer.status == 401
    assert page.locator("#signed-in-as").count() == 0
