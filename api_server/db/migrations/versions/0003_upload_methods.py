"""Where each blob's bytes are, and how each upload is sent and verified.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("object_key", sa.Text(), nullable=True))
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("method", sa.String(length=16), nullable=False, server_default="multipart"))
        batch.add_column(sa.Column("part_size", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("part_size")
        batch.drop_column("method")
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("object_key")
