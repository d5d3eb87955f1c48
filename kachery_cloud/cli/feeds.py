"""``kachery-cloud feed create|append|read|info``: append-only logs of a project."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from .. import feeds
from ..errors import InvalidArgumentError, ServerUnreachableError
from ..protocol.feed_format import MAX_MESSAGES_PER_APPEND
from ._errors import handle_errors

_FOLLOW_POLL_SEC = 30


@click.group("feed")
def feed() -> None:
    """Append-only message logs that other machines follow live."""


@feed.command("create")
@click.option("--project", default=None, help="Project id [default: KACHERY_CLOUD_PROJECT, else yours].")
@handle_errors
def create(project: str | None) -> None:
    """Create an empty feed and print its URI."""
    click.echo(feeds.create_feed(project).uri)


@feed.command("append")
@click.argument("feed_uri")
@click.argument("messages", nargs=-1)
@handle_errors
def append(feed_uri: str, messages: tuple[str, ...]) -> None:
    """Append MESSAGES (JSON objects) to the feed; with none given, read one JSON object per line from standard
    input. Arguments go in as one append (all or none); standard input in appends of up to 1000 lines."""
    handle = feeds.load_feed(feed_uri)
    batches = [[_parse(text, f"argument {i + 1}") for i, text in enumerate(messages)]] if messages else _stdin_batches()
    first = last = None
    count = 0
    for batch in batches:
        numbers = handle.append_messages(batch)
        if numbers:
            first = numbers[0] if first is None else first
            last = numbers[-1]
            count += len(numbers)
    if count == 0:
        raise click.ClickException("no messages given (as arguments or on standard input)")
    click.echo(f"appended {count} message{'s' if count != 1 else ''}: numbers {first}..{last}")


@feed.command("read")
@click.argument("feed_uri")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First message number.")
@click.option("--end", type=click.IntRange(min=0), default=None, help="Stop before this message number.")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new messages and print them as they come.")
@click.option("--records", is_flag=True, help="Print number, client, time and message of each, not the message only.")
@handle_errors
def read(feed_uri: str, start: int, end: int | None, follow: bool, records: bool) -> None:
    """Print the feed's messages as JSON lines (with --follow, until interrupted)."""
    if follow and end is not None:
        raise click.UsageError("--follow reads without an end; leave out --end")
    handle = feeds.load_feed(feed_uri)
    if end is not None:
        _print(handle.get_message_records(start, end), records)
        return
    handle.set_position(start)
    _print(handle.get_next_message_records(), records)
    try:
        while follow:
            try:
                _print(handle.get_next_message_records(timeout_sec=_FOLLOW_POLL_SEC), records)
            except ServerUnreachableError as e:
                # A follower outlives a server restart or a network outage: say so once, keep trying.
                click.echo(f"{e}; still trying", err=True)
    except KeyboardInterrupt:
        sys.exit(130)


@feed.command("info")
@click.argument("feed_uri")
@handle_errors
def info(feed_uri: str) -> None:
    """Print the feed's URI, project and number of messages, as JSON."""
    handle = feeds.load_feed(feed_uri)
    details = {"uri": handle.uri, "project_id": handle.project_id, "num_messages": handle.get_num_messages()}
    click.echo(json.dumps(details, indent=2))


def _print(found: list[feeds.FeedMessage], records: bool) -> None:
    for record in found:
        if records:
            line = {
                "number": record.number,
                "client_id": record.client_id,
                "appended_at_ms": record.appended_at_ms,
                "message": record.message,
            }
        else:
            line = record.message
        click.echo(json.dumps(line))
    sys.stdout.flush()


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise InvalidArgumentError(f"{where} is not valid JSON ({e}): {text[:80]!r}") from None


def _stdin_batches() -> Iterator[list[Any]]:
    batch: list[Any] = []
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        batch.append(_parse(line, f"line {number}"))
        if len(batch) == MAX_MESSAGES_PER_APPEND:
            yield batch
            batch = []
    if batch:
        yield batch
