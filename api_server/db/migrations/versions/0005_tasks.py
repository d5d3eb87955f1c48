"""Task queues: the tasks table, and the role a project asks of task requesters.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("task_request_role", sa.String(length=16), nullable=False, server_default="write"))
    op.create_table(
        "tasks",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("task_type", sa.String(length=16), nullable=False),
        sa.Column("task_name", sa.String(length=255), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("requested_by_client_id", sa.String(length=64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("status_version", sa.Integer(), nullable=False),
        sa.Column("claim_id", sa.String(length=32), nullable=True),
        sa.Column("worker_id", sa.String(length=32), nullable=True),
        sa.Column("worker_client_id", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("progress", sa.Text(), nullable=True),
        sa.Column("result_sha1", sa.String(length=40), nullable=True),
        sa.Column("result_size", sa.BigInteger(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'finished', 'error', 'cancelled')", name=op.f("ck_tasks_state")
        ),
        sa.CheckConstraint("task_type IN ('calculation', 'action')", name=op.f("ck_tasks_task_type")),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_tasks_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "id", name=op.f("pk_tasks")),
    )
    op.create_index("ix_tasks_queue", "tasks", ["project_id", "state", "created_at_ms"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_tasks_queue", table_name="tasks")
    op.drop_table("tasks")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("task_request_role")
