"""Projects as a client sees them."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from ..services import projects
from .deps import ContextDep, OptionalCaller

router = APIRouter(prefix="/api/projects", tags=["projects"])


class ProjectInfo(BaseModel):
    project_id: str
    label: str
    public_read: bool
    role: str | None  # the caller's role; None for a reader of a public project who is not a member


@router.get("/{project_id}", response_model=ProjectInfo)
def get_project(project_id: str, caller: OptionalCaller, context: ContextDep) -> ProjectInfo:
    """A project the caller may read (anyone, for a public project)."""
    with context.db.transaction() as session:
        project = projects.require_caller_role(session, project_id, caller, "read")
        return ProjectInfo(
            project_id=project.id,
            label=project.label,
            public_read=project.public_read,
            role=projects.role_of(session, project_id, caller.user_id),
        )
