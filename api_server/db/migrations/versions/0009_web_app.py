"""The web app: browser sessions, one-time sign-in links, the secret that signs the app's cookies, when each
client was last seen, whether an invitation grants a role (a link for one more machine does not), and what each
project kept at the end of each day (the usage chart).

Revision ID: 0009
Revises: 0008
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("how", sa.String(length=16), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_web_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_sha256", name=op.f("pk_web_sessions")),
    )
    op.create_index("ix_web_sessions_user_id", "web_sessions", ["user_id"])
    op.create_index("ix_web_sessions_expires_at_ms", "web_sessions", ["expires_at_ms"])
    op.create_table(
        "sign_in_links",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("used_at_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sign_in_links_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_sha256", name=op.f("pk_sign_in_links")),
    )
    op.create_index("ix_sign_in_links_user_id", "sign_in_links", ["user_id"])
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("last_seen_ms", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("invitations") as batch:
        batch.add_column(sa.Column("grants_role", sa.Boolean(), nullable=False, server_default=sa.true()))
    with op.batch_alter_table("usage_counters") as batch:
        batch.add_column(sa.Column("stored_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("server_identity") as batch:
        batch.add_column(sa.Column("web_secret", sa.String(length=64), nullable=True))
    server_identity = sa.table("server_identity", sa.column("web_secret", sa.String))
    op.execute(server_identity.update().values(web_secret=secrets.token_hex(32)))


def downgrade() -> None:
    with op.batch_alter_table("server_identity") as batch:
        batch.drop_column("web_secret")
    with op.batch_alter_table("usage_counters") as batch:
        batch.drop_column("stored_bytes")
    with op.batch_alter_table("invitations") as batch:
        batch.drop_column("grants_role")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("last_seen_ms")
    op.drop_index("ix_sign_in_links_user_id", table_name="sign_in_links")
    op.drop_table("sign_in_links")
    op.drop_index("ix_web_sessions_expires_at_ms", table_name="web_sessions")
    op.drop_index("ix_web_sessions_user_id", table_name="web_sessions")
    op.drop_table("web_sessions")
