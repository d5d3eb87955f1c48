"""The web app's forms end to end, in a real browser: what an admin does on a page takes effect for the
clients, and a form without its token (or sent from a page elsewhere) is refused."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .web_kit import run_client, shoot, sign_in, web_login

LOAD = "import sys, kachery_cloud as kcl; sys.stdout.write(kcl.load_text({uri!r}))"


def _project(server: Any, project_id: str) -> dict[str, Any]:
    rows = json.loads(server.admin("list-projects", "--json").stdout)
    return next(row for row in rows if row["project_id"] == project_id)


def test_a_member_added_on_the_page_can_then_read_with_her_client(lab: Any, new_browser: Any, tmp_path: Path) -> None:
    server, made, _ = lab
    # Alice has a machine of her own, registered by an invitation to another project.
    link = server.admin("invite", "open-data", "--role", "read", "--user", "alice").stdout.strip().splitlines()[-1]
    alice = tmp_path / "alice"
    joined = run_client(alice, server, f"import kachery_cloud as kcl; kcl.init(invite={link!r}, quiet=True)")
    assert joined.returncode == 0, joined.stderr
    before = run_client(alice, server, LOAD.format(uri=made["text_uri"]))
    assert before.returncode != 0 and "hello from the lab" not in before.stdout

    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab")
    page.fill("#add-member-who", "alice")
    page.select_option("#add-member-role", "read")
    page.click("#add-member-button")
    assert page.inner_text("#notice") == "alice has role read"
    assert page.locator("#members tr[data-user=alice]").count() == 1
    shoot(page, "member-added")
    after = run_client(alice, server, LOAD.format(uri=made["text_uri"]))
    assert after.returncode == 0, after.stderr
    assert after.stdout == "hello from the lab\n"

    # Made a writer on the page, she can store there; removed, she can read nothing more of it.
    write = "import kachery_cloud as kcl; print(kcl.store_text('from alice'))"
    assert run_client(alice, server, write, KACHERY_CLOUD_PROJECT="lab").returncode != 0
    page.select_option("#members tr[data-user=alice] select", "write")
    page.click("#members tr[data-user=alice] >> text=Change")
    assert page.inner_text("#notice") == "alice has role write"
    stored = run_client(alice, server, write, KACHERY_CLOUD_PROJECT="lab")
    assert stored.returncode == 0, stored.stderr
    page.click("#members tr[data-user=alice] >> text=Remove")
    assert page.inner_text("#notice") == "removed alice"
    assert page.locator("#members tr[data-user=alice]").count() == 0
    gone = run_client(alice, server, LOAD.format(uri=made["json_uri"]))
    assert gone.returncode != 0 and "units" not in gone.stdout


def test_a_form_without_its_token_is_refused(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab/settings")
    page.check("#visibility-public")
    page.evaluate("document.querySelector('#settings-form input[name=csrftoken]').remove()")
    with page.expect_response(f"{server.url}/projects/lab/settings") as answer:
        page.click("#save-settings")
    assert answer.value.status == 403
    assert "Form refused" in page.inner_text("h1")
    shoot(page, "form-refused")
    assert _project(server, "lab")["public_read"] is False

    # Another browser's token (valid, signed by this server) does not pass for this browser's either.
    other = new_browser().new_page()
    other.goto(web_login(server))
    foreign = other.eval_on_selector("input[name=csrftoken]", "e => e.value")
    page.goto(f"{server.url}/projects/lab/settings")
    page.check("#visibility-public")
    page.evaluate("token => document.querySelector('#settings-form input[name=csrftoken]').value = token", foreign)
    with page.expect_response(f"{server.url}/projects/lab/settings") as answer:
        page.click("#save-settings")
    assert answer.value.status == 403
    assert _project(server, "lab")["public_read"] is False


@pytest.fixture
def page_elsewhere() -> Iterator[Any]:
    """A web server on another port, serving whatever page a test puts in ``pages[path]``: an attacker's site."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield pages, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _auto_submit(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    return f'<form id="f" method="post" action="{action}">{inputs}</form><script>f.submit()</script>'


def test_a_page_elsewhere_cannot_use_a_signed_in_admins_browser(
    lab: Any, new_browser: Any, page_elsewhere: Any
) -> None:
    """The attacker's page is on another port of the same host: the same site to the browser, which sends the
    admin's cookies along (SameSite does not help here); only the form token stops it."""
    server, _made, _ = lab
    pages, attacker = page_elsewhere
    server.admin("create-user", "mallory")
    pages["/grab"] = _auto_submit(f"{server.url}/projects/lab/members", {"who": "mallory", "role": "admin"})
    page = sign_in(new_browser(), server)
    with page.expect_response(f"{server.url}/projects/lab/members") as answer:
        page.goto(f"{attacker}/grab")
    assert answer.value.status == 403
    assert "mallory" not in _project(server, "lab")["members"]

    # Cookies ignore ports, so the page can read the form token's cookie and send it too: still refused, since
    # the browser names the page the form came from (Origin), and it is not one of the server's.
    pages["/grab-with-token"] = (
        f'<form id="f" method="post" action="{server.url}/projects/lab/members">'
        '<input type="hidden" name="who" value="mallory"><input type="hidden" name="role" value="admin">'
        '<input type="hidden" name="csrftoken" id="t"></form><script>'
        "t.value = document.cookie.split('; ').find(c => c.startsWith('kachery_csrf=')).split('=')[1];"
        "f.submit()</script>"
    )
    assert any(c["name"] == "kachery_csrf" for c in page.context.cookies(attacker))  # the page can read it
    with page.expect_response(f"{server.url}/projects/lab/members") as answer:
        page.goto(f"{attacker}/grab-with-token")
    assert answer.value.status == 403
    assert "mallory" not in _project(server, "lab")["members"]

    # Nor can it sign a visitor in as the attacker (whose own sign-in link it holds), which would make the
    # visitor's uploads and notes land in the attacker's account.
    token = web_login(server)  # a valid link, which the attacker holds
    pages["/login"] = _auto_submit(f"{server.url}/sign-in", {"token": token.rsplit("/", 1)[1]})
    visitor = new_browser().new_page()
    with visitor.expect_response(f"{server.url}/sign-in") as answer:
        visitor.goto(f"{attacker}/login")
    assert answer.value.status == 403
    visitor.goto(f"{server.url}/")
    assert visitor.locator("#signed-in-as").count() == 0


def test_the_settings_form_changes_visibility_quota_and_who_requests_tasks(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    server.admin("create-project", "settings-lab")
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/settings-lab/settings")
    page.fill("input[name=label]", "Renamed on the page")
    page.check("#visibility-public")
    page.fill("#quota", "1.5G")
    page.check("input[name=task_request_role][value=read]")
    page.click("#save-settings")
    assert page.inner_text("#notice") == "saved"
    row = _project(server, "settings-lab")
    assert row["public_read"] is True and row["storage_quota_bytes"] == 1610612736
    assert row["label"] == "Renamed on the page"
    anonymous = new_browser().new_page()
    assert anonymous.goto(f"{server.url}/projects/settings-lab").status == 200

    # A project's own admin (not the server's owner) changes the rest, but not the quota.
    server.admin("create-user", "admin-ada")
    server.admin("add-member", "settings-lab", "admin-ada", "--role", "admin")
    ada = sign_in(new_browser(), server, "--user", "admin-ada")
    ada.goto(f"{server.url}/projects/settings-lab/settings")
    assert ada.locator("#quota").count() == 0 and ada.inner_text("#quota-text") == "1.5 GiB"
    token = ada.eval_on_selector("input[name=csrftoken]", "e => e.value")
    lifted = ada.request.post(
        f"{server.url}/projects/settings-lab/settings",
        form={"csrftoken": token, "visibility": "public", "sets_quota": "1", "quota": ""},
        headers={"Origin": server.url},
    )
    assert lifted.status == 403
    assert _project(server, "settings-lab")["storage_quota_bytes"] == 1610612736
    ada.check("input[name=task_request_role][value=write]")
    ada.click("#save-settings")
    assert ada.inner_text("#notice") == "saved"
    row = _project(server, "settings-lab")
    assert row["storage_quota_bytes"] == 1610612736 and row["public_read"] is True

    page.fill("#quota", "a lot")
    with page.expect_response(f"{server.url}/projects/settings-lab/settings") as answer:
        page.click("#save-settings")
    assert answer.value.status == 400
    assert "is not a size" in page.inner_text("#error-message")
    assert _project(server, "settings-lab")["storage_quota_bytes"] == 1610612736


def test_a_pending_task_is_cancelled_on_its_page(lab: Any, new_browser: Any) -> None:
    server, made, owner_dir = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab/tasks/{made['tasks']['test.echo']}")
    assert page.inner_text("#task-state") == "pending"
    page.click("#cancel-button")
    assert page.inner_text("#notice") == "cancelled"
    assert page.inner_text("#task-state") == "cancelled"
    assert "in the web app" in page.inner_text("#task-error")
    seen = run_client(
        owner_dir,
        server,
        "import kachery_cloud as kcl; print(kcl.TaskClient('lab').get_task_status({!r}).state)".format(
            made["tasks"]["test.echo"]
        ),
    )
    assert seen.stdout.strip() == "cancelled", seen.stderr


def test_a_client_revoked_on_the_page_is_refused(lab: Any, new_browser: Any, tmp_path: Path) -> None:
    server, _made, _ = lab
    old = tmp_path / "old-laptop"
    linked = run_client(old, server, "import kachery_cloud as kcl; kcl.init(quiet=True, label='old-laptop')")
    assert linked.returncode == 0, linked.stderr
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/clients")
    assert "old-laptop" in page.inner_text("#clients")
    page.click("#clients tr:has-text('old-laptop') >> text=Revoke")
    assert page.inner_text("#notice") == "revoked old-laptop"
    assert "old-laptop" not in page.inner_text("#clients")
    refused = run_client(old, server, "import kachery_cloud as kcl; kcl.store_text('after revoke')")
    assert refused.returncode != 0 and "not registered" in refused.stderr


def test_an_invitation_made_on_the_page_lets_a_newcomer_join_in_the_browser(
    lab: Any, new_browser: Any, tmp_path: Path
) -> None:
    server, made, _ = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab")
    page.select_option("#invite-role", "write")
    page.click("#invite-button")
    link = page.inner_text("#invitation-link")
    assert link.startswith(f"{server.url}/invite/")
    assert "/invite/" not in page.url  # the secret is in the answer, not in an address logs and history keep

    # An invitation naming an existing user would hand its holder that account: the page refuses it.
    server.admin("create-user", "existing-erin")
    page.goto(f"{server.url}/projects/lab")
    page.fill("input[name=for_user]", "existing-erin")
    with page.expect_response(f"{server.url}/projects/lab/invitations") as refused:
        page.click("#invite-button")
    assert refused.value.status == 409 and "existing user" in page.inner_text("#error-message")

    carol = new_browser().new_page()
    carol.goto(link)
    shoot(carol, "invitation")
    carol.fill("#join-name", "carol")
    carol.click("#join-button")
    carol.wait_for_url(f"{server.url}/projects/lab")
    assert carol.inner_text("#signed-in-as") == "carol"
    assert carol.inner_text("#your-role") == "write"
    again = new_browser().new_page()
    assert again.goto(link).status == 409

    # From her clients page, a link that adds a machine of hers.
    carol.goto(f"{server.url}/clients")
    carol.click("#link-machine-button")
    command = carol.inner_text("#machine-link")
    shoot(carol, "clients-link-machine")
    machine_link = command.split("--invite ", 1)[1]
    # The link gives no role: removed from the lab after it was made, carol's new machine cannot read the lab.
    server.admin("remove-member", "lab", "carol")
    laptop = tmp_path / "carol-laptop"
    code = (
        "import kachery_cloud as kcl; "
        f"print(kcl.init(invite={machine_link!r}, label='carol-laptop', quiet=True)['user'])"
    )
    joined = run_client(laptop, server, code)
    assert joined.returncode == 0 and joined.stdout.strip() == "carol", joined.stderr
    loaded = run_client(laptop, server, LOAD.format(uri=made["text_uri"]))
    assert loaded.returncode != 0 and "hello from the lab" not in loaded.stdout
    carol.goto(f"{server.url}/clients")
    assert "carol-laptop" in carol.inner_text("#clients")
