"""The registration page a person opens from ``kachery-cloud-init``'s link, and a plain index page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ..db.models import now_ms
from ..errors import ApiError
from ..routes.deps import ContextDep
from ..services import identity

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


@router.get("/", response_class=HTMLResponse)
def index(request: Request, context: ContextDep) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "index.html",
        {"server_url": context.server_url, "mode": context.settings.registration_mode},
    )


@router.get("/register/{registration_id}", response_class=HTMLResponse)
def register_page(registration_id: str, request: Request, context: ContextDep) -> HTMLResponse:
    page: dict[str, object] = {"server_url": context.server_url, "google_client_id": context.settings.google_client_id}
    status = 200
    try:
        with context.db.transaction() as session:
            registration = identity.get_registration(session, registration_id)
            page.update(
                state=identity.registration_state(registration),
                client_id=registration.client_id,
                label=registration.label,
                minutes_left=max(0, (registration.expires_at_ms - now_ms()) // 60000),
                complete_url=f"{context.server_url}/api/registrations/{registration.id}/google",
            )
    except ApiError as e:
        page.update(state="invalid", error=e.message)
        status = e.status
    return templates.TemplateResponse(request, "register.html", page, status_code=status)
