"""Fills a lab server with what the web app's pages show: ``python -m tests.web.lab_content``, run with
``KACHERY_CLOUD_DIR`` and ``KACHERY_CLOUD_API_URL`` set, as the server's owner. Prints what it made, as JSON.

Project ``lab`` (private) gets blobs, mutables in folders, a feed with messages, and tasks that finished, failed
(with the worker's traceback), and one left pending; ``open-data`` (public) gets one blob."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import kachery_cloud as kcl


def main() -> None:
    kcl.init(quiet=True, label="owner-laptop")
    os.environ["KACHERY_CLOUD_PROJECT"] = "lab"
    made: dict[str, object] = {}
    made["text_uri"] = kcl.store_text("hello from the lab\n", label="hello.txt")
    made["json_uri"] = kcl.store_json({"session": 3, "units": [1, 2, 3]}, label="session3.json")
    made["big_uri"] = kcl.store_text("x" * (300 << 10), label="big.txt")  # over the inline size: a single PUT
    kcl.set_mutable("@lab/@exp1/latest", made["json_uri"])
    kcl.set_mutable("@lab/@exp1/notes", "first run; electrodes 3 and 7 noisy")
    kcl.set_mutable("@lab/@exp1/notes", "second run; electrode 7 replaced")
    kcl.set_mutable("@lab/@exp2/latest", made["text_uri"])
    kcl.set_mutable("@lab/readme", "the lab's shared pointers")
    feed = kcl.create_feed()
    for i in range(3):
        feed.append_message({"event": "spike-sorted", "session": i})
    made["feed_id"] = feed.feed_id
    made["tasks"] = _tasks()
    _load_elsewhere(made["big_uri"])
    made["public_uri"] = _in_project("open-data", lambda: kcl.store_text("open data for everyone\n", label="open.txt"))
    print(json.dumps(made))


def _in_project(project: str, action):  # type: ignore[no-untyped-def]
    old = os.environ["KACHERY_CLOUD_PROJECT"]
    os.environ["KACHERY_CLOUD_PROJECT"] = project
    try:
        return action()
    finally:
        os.environ["KACHERY_CLOUD_PROJECT"] = old


def _load_elsewhere(uri: str) -> None:
    """Load ``uri`` from another client directory of the owner's (a second machine), so the lab has bytes out."""
    import tempfile

    with tempfile.TemporaryDirectory() as other:
        code = f"import kachery_cloud as kcl; kcl.init(quiet=True, label='owner-desktop'); kcl.load_text({uri!r})"
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "KACHERY_CLOUD_DIR": other}, check=True)


def _tasks() -> dict[str, str]:
    """A finished task, one that failed with a traceback, and one left pending (no worker runs by then)."""
    env = {**os.environ, "RUN_LOG": os.devnull}
    worker = subprocess.Popen([sys.executable, "-m", "tests.integration.task_worker"], env=env)
    try:
        client = kcl.TaskClient()
        client.request_task("calculation", "test.add", {"a": 2, "b": 3}, timeout_sec=60, quiet=True)
        with contextlib.suppress(kcl.TaskError):
            client.request_task(
                "action", "test.fail", {"reason": "electrode 7 is unplugged"}, timeout_sec=60, quiet=True
            )
    finally:
        worker.terminate()
        worker.wait(30)
    time.sleep(0.2)
    with contextlib.suppress(kcl.TaskTimeout):
        client.request_task("action", "test.echo", {"left": "pending"}, timeout_sec=0, quiet=True)
    return {t.task_name: t.task_id for t in client.list_tasks()}


if __name__ == "__main__":
    main()
