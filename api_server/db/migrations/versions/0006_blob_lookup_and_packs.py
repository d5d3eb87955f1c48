"""Blobs: an index on sha1 (finding a blob by hash across projects, on every load, read the whole table), and
the offset of a small blob inside a pack object.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_blobs_sha1", "blobs", ["sha1"])
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("pack_offset", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("pack_offset")
    op.drop_index("ix_blobs_sha1", table_name="blobs")
