"""What each page of the web app shows, in a real browser, signed in as the lab's owner; a screenshot of each."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from .web_kit import run_client, shoot, sign_in


def _hash(uri: str) -> str:
    return uri.split("://", 1)[1].split("?", 1)[0]


def test_home_lists_your_projects_with_role_storage_and_quota(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    server.admin("set-quota", "lab", "10G")
    page = sign_in(new_browser(), server)
    rows = {
        row.split("\t")[0]: row.split("\t")
        for row in page.eval_on_selector_all(
            "#projects tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText).join('\\t'))"
        )
    }
    assert rows["lab"][1:] == ["Spike sorting lab", "admin", "private", rows["lab"][4], "10.0 GiB"]
    assert rows["lab"][4].endswith("KiB")  # what the owner stored there
    assert rows["open-data"][2:4] == ["admin", "public"]
    assert rows["open-data"][5] == "unlimited"
    assert page.inner_text("#signed-in-as").endswith("@localhost")
    shoot(page, "home")


def test_project_page_shows_members_and_the_admin_forms(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab")
    assert "Spike sorting lab" in page.inner_text("h1")
    assert page.inner_text("#your-role") == "admin"
    members = page.inner_text("#members")
    assert "@localhost" in members and "(owner)" in members
    assert page.is_visible("#add-member") and page.is_visible("#make-invitation")
    shoot(page, "project")


def test_usage_page_charts_requests_bytes_in_out_and_stored(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab/usage")
    for chart in ("requests", "bytes_in", "bytes_out", "stored_bytes"):
        heights = page.eval_on_selector_all(
            f"#chart-{chart} rect", "bars => bars.map(b => parseFloat(b.getAttribute('height')))"
        )
        assert len(heights) == 30, chart
        # Today's bar is the last one, and the lab did all of these today (bytes out: the tasks' result loads).
        assert heights[-1] > 0, chart
    today = page.inner_text("#usage-days tbody tr:first-child")
    assert "KiB" in today
    shoot(page, "usage")


def test_blobs_page_lists_recent_blobs_and_downloads_them(lab: Any, new_browser: Any) -> None:
    server, made, _ = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab/blobs")
    table = page.inner_text("#blobs")
    for uri in (made["text_uri"], made["json_uri"], made["big_uri"]):
        assert _hash(uri) in table
    assert "300.0 KiB" in table and "owner-laptop" in table
    shoot(page, "blobs")
    # A small blob (inline, in a pack) comes from the server; a bigger one by a redirect to the store.
    for uri, expected in ((made["text_uri"], b"hello from the lab\n"), (made["big_uri"], b"x" * (300 << 10))):
        with page.expect_download() as info:
            page.evaluate(
                "href => { const a = document.createElement('a'); a.href = href; a.download = ''; "
                "document.body.appendChild(a); a.click(); }",
                f"/projects/lab/blobs/{_hash(uri)}",
            )
        assert Path(info.value.path()).read_bytes() == expected


def test_mutables_pages_browse_folders_and_show_values_and_versions(lab: Any, new_browser: Any) -> None:
    server, made, _ = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab/mutables")
    assert page.inner_text("#mutables .folder").startswith("📁 @lab/")
    page.click("text=@lab/")
    listing = page.inner_text("#mutables")
    assert "@exp1/" in listing and "@exp2/" in listing and "readme" in listing
    page.click("text=@exp1/")
    assert page.inner_text("#crumbs").endswith("@lab / @exp1")
    shoot(page, "mutables")
    page.click("#mutables >> text=notes")
    assert page.inner_text("#mutable-key") == "@lab/@exp1/notes"
    assert page.inner_text("#mutable-value") == "second run; electrode 7 replaced"
    assert page.inner_text("#mutable-version") == "2"
    shoot(page, "mutable")
    page.goto(f"{server.url}/projects/lab/mutable?key={quote('@lab/@exp1/latest')}")
    assert page.inner_text("#mutable-value") == made["json_uri"]


def test_feed_page_shows_messages_and_follows_new_ones_live(lab: Any, new_browser: Any) -> None:
    server, made, owner_dir = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab/feeds")
    assert made["feed_id"] in page.inner_text("#feeds")
    shoot(page, "feeds")
    page.click(f"text=kachery-feed://{made['feed_id']}")
    assert page.locator("#feed-messages tbody tr").count() == 3
    assert '"spike-sorted"' in page.inner_text("#feed-messages")
    appended = run_client(
        owner_dir,
        server,
        f"import kachery_cloud as kcl; f = kcl.load_feed('kachery-feed://{made['feed_id']}'); "
        "f.append_message({'event': 'live', 'n': 4})",
    )
    assert appended.returncode == 0, appended.stderr
    # It arrives without a reload: the page is waiting on the server for the next message.
    page.wait_for_function("document.querySelectorAll('#feed-messages tbody tr').length === 4")
    assert '"live"' in page.inner_text("#feed-messages tbody tr:last-child")
    assert page.inner_text("#feed-count") == "4"
    shoot(page, "feed")


def test_tasks_pages_show_state_progress_errors_with_traceback(lab: Any, new_browser: Any) -> None:
    server, made, _ = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab/tasks")
    table = page.inner_text("#tasks")
    assert "test.add" in table and "finished" in table
    assert "test.fail" in table and "error" in table
    assert "test.echo" in table and "pending" in table
    shoot(page, "tasks")
    page.goto(f"{server.url}/projects/lab/tasks/{made['tasks']['test.fail']}")
    error = page.inner_text("#task-error")
    assert "Traceback" in error and "ValueError: refusing: electrode 7 is unplugged" in error
    assert "task_worker.py" in error
    shoot(page, "task-error")
    page.goto(f"{server.url}/projects/lab/tasks/{made['tasks']['test.add']}")
    assert page.inner_text("#task-state") == "finished"
    assert '"sum"' in page.inner_text("#task-result") or "5" in page.inner_text("#task-result")


def test_settings_page_shows_the_project_settings_to_admins(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/projects/lab/settings")
    assert page.is_checked("input[name=visibility][value=private]")
    assert page.is_checked("input[name=task_request_role][value=write]")
    shoot(page, "settings")


def test_clients_page_shows_label_and_last_seen(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    page = sign_in(new_browser(), server)
    page.goto(f"{server.url}/clients")
    row = page.inner_text("#clients tbody tr:first-child")
    assert "owner-laptop" in row
    assert "never" not in row and "UTC" in row.split("owner-laptop", 1)[1]  # linked and last seen
    shoot(page, "clients")


def test_docs_and_redoc_render_from_the_package_alone(lab: Any, new_browser: Any) -> None:
    server, _made, _ = lab
    page = new_browser().new_page()
    elsewhere: list[str] = []

    def only_this_server(route: Any) -> None:
        # Whatever would leave the machine is recorded and refused (there is no internet here anyway).
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "kachery-cloud project API" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock").count() > 20  # every operation listed
    shoot(page, "docs", full_page=False)
    page.goto(f"{server.url}/redoc")
    page.wait_for_selector("h1")
    assert "kachery-cloud project API" in page.inner_text("h1")
    shoot(page, "redoc", full_page=False)
    assert elsewhere == []
