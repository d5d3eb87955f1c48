"""Security: the server's own id (signed into every request, so a request signed for one server is refused by
another), the address a pending registration came from (capped per address), and the bytes each project keeps
(blobs, mutables, feed messages, task inputs and results), which its quota limits.

Revision ID: 0007
Revises: 0006
"""

import secrets
import time

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_identity",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_server_identity")),
    )
    op.execute(
        sa.text("INSERT INTO server_identity (id, created_at_ms) VALUES (:id, :now)").bindparams(
            id=secrets.token_hex(16), now=int(time.time() * 1000)
        )
    )
    with op.batch_alter_table("registrations") as batch:
        batch.add_column(sa.Column("address", sa.String(length=64), nullable=False, server_default=""))
    op.create_index("ix_registrations_address", "registrations", ["address"])
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("stored_bytes", sa.BigInteger(), nullable=False, server_default="0"))
    _count_stored_bytes()


def _count_stored_bytes() -> None:
    """What every project keeps today, in bytes (PostgreSQL counts text in characters with length())."""
    size = "octet_length" if op.get_bind().dialect.name == "postgresql" else "length"
    text_size = (lambda c: f"octet_length({c})") if size == "octet_length" else (lambda c: f"length(CAST({c} AS BLOB))")
    op.execute(
        f"""UPDATE projects SET stored_bytes =
        (SELECT COALESCE(SUM(size), 0) FROM blobs WHERE blobs.project_id = projects.id)
      + (SELECT COALESCE(SUM({text_size("key")} + COALESCE({size}(value), 0)), 0) FROM mutables
         WHERE mutables.project_id = projects.id)
      + (SELECT COALESCE(SUM({text_size("body")} + {text_size("signature")}), 0) FROM feed_messages
         JOIN feeds ON feeds.id = feed_messages.feed_id WHERE feeds.project_id = projects.id)
      + (SELECT COALESCE(SUM({text_size("input")} + COALESCE({text_size("result_json")}, 0)), 0) FROM tasks
         WHERE tasks.project_id = projects.id)"""
    )


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("stored_bytes")
    op.drop_index("ix_registrations_address", table_name="registrations")
    with op.batch_alter_table("registrations") as batch:
        batch.drop_column("address")
    op.drop_table("server_identity")
