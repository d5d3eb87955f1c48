"""Feeds: thin HTTP over :mod:`api_server.services.feeds`. Reading is a long-poll (``wait_ms``)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from kachery_cloud.protocol.feed_format import MAX_MESSAGES_PER_APPEND, MAX_WAIT_SEC

from ..services.feeds import MAX_READ_MESSAGES
from .deps import ContextDep, OptionalCaller, RegisteredCaller, long_poll

router = APIRouter(prefix="/api/feeds", tags=["feeds"])


class CreateRequest(BaseModel):
    project_id: str | None = Field(None, description="default: the caller's default project")


class FeedInfo(BaseModel):
    feed_id: str
    uri: str
    project_id: str
    num_messages: int
    created_by_client_id: str
    created_at_ms: int


class SignedMessage(BaseModel):
    body: str = Field(description="the message as canonical JSON (a JSON object)")
    signature: str = Field(description="Ed25519 signature by the appending client, 128 hex digits")


class AppendRequest(BaseModel):
    append_id: str = Field(
        pattern=r"^[0-9a-f]{32}$", description="chosen by the client, random; a retried append sends the same one"
    )
    # The service refuses more than MAX_MESSAGES_PER_APPEND with a clear too_many_messages (the body limit
    # bounds what is parsed).
    messages: list[SignedMessage] = Field(description=f"at most {MAX_MESSAGES_PER_APPEND} messages")


class AppendResponse(BaseModel):
    feed_id: str
    first_number: int
    count: int
    repeated: bool = Field(description="true if this append_id had been applied already (a retry)")


class StoredMessage(BaseModel):
    number: int
    body: str
    client_id: str
    signature: str
    appended_at_ms: int


class MessagesResponse(BaseModel):
    feed_id: str
    start: int
    num_messages: int = Field(description="how many messages the feed had when this page was read")
    messages: list[StoredMessage]


@router.post("", response_model=FeedInfo)
def create_feed(body: CreateRequest, caller: RegisteredCaller, context: ContextDep) -> dict:
    """A new, empty feed in a project the caller may write to."""
    return context.feeds.create(caller, body.project_id)


@router.get("/{feed_id}", response_model=FeedInfo)
def feed_info(feed_id: str, caller: OptionalCaller, context: ContextDep) -> dict:
    """A feed's project and number of messages (anyone, for a feed of a public project)."""
    return context.feeds.info(caller, feed_id)


@router.post("/{feed_id}/messages", response_model=AppendResponse)
def append_messages(feed_id: str, body: AppendRequest, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Append signed messages; they get consecutive numbers after the feed's last one."""
    messages = [(m.body, m.signature) for m in body.messages]
    return context.feeds.append(caller, feed_id, body.append_id, messages)


@router.get("/{feed_id}/messages", response_model=MessagesResponse)
async def read_messages(
    feed_id: str,
    caller: OptionalCaller,
    context: ContextDep,
    start: int = Query(0, ge=0, description="number of the first message wanted"),
    limit: int = Query(MAX_READ_MESSAGES, ge=1, le=MAX_READ_MESSAGES),
    wait_ms: int = Query(0, ge=0, le=MAX_WAIT_SEC * 1000, description="long-poll: wait this long for a message"),
) -> dict:
    """Messages from ``start`` on. If there are none yet, wait up to ``wait_ms`` for one to be appended."""
    with long_poll(context, caller, wait_ms):
        return await context.feeds.read(caller, feed_id, start, limit, wait_ms)
