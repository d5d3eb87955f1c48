"""Mutables (named values with versions) and feeds (append-only message logs).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mutables",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column(
            "key",
            sa.String(length=1024).with_variant(sa.String(length=1024, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_by_client_id", sa.String(length=64), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_mutables_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "key", name=op.f("pk_mutables")),
    )
    op.create_table(
        "feeds",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("num_messages", sa.BigInteger(), nullable=False),
        sa.Column("created_by_client_id", sa.String(length=64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_feeds_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feeds")),
    )
    op.create_index(op.f("ix_feeds_project_id"), "feeds", ["project_id"], unique=False)
    op.create_table(
        "feed_messages",
        sa.Column("feed_id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("appended_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("append_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["feed_id"], ["feeds.id"], name=op.f("fk_feed_messages_feed_id_feeds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("feed_id", "number", name=op.f("pk_feed_messages")),
    )
    op.create_index("uq_feed_messages_append", "feed_messages", ["feed_id", "append_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_feed_messages_append", table_name="feed_messages")
    op.drop_table("feed_messages")
    op.drop_index(op.f("ix_feeds_project_id"), table_name="feeds")
    op.drop_table("feeds")
    op.drop_table("mutables")
