"""Registration and self-description of clients."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from kachery_cloud.protocol.hosts import is_loopback_host
from kachery_cloud.protocol.owner_proof import is_owner_proof

from ..errors import AuthenticationFailed, Forbidden, InvalidRequest
from ..services import identity, invitations
from .deps import ContextDep, OptionalCaller, RegisteredCaller

router = APIRouter(prefix="/api", tags=["clients"])


class ProjectMembership(BaseModel):
    project_id: str
    label: str
    role: Literal["read", "write", "admin"]
    public_read: bool


class ClientInfo(BaseModel):
    client_id: str
    label: str
    user: str
    email: str | None
    default_project_id: str | None
    projects: list[ProjectMembership]
    server_url: str


class RegisterRequest(BaseModel):
    label: str = Field("", max_length=identity.MAX_LABEL_LENGTH)
    # Made from the server's owner-token file (kachery_cloud.protocol.owner_proof): proves the caller is the Unix
    # user who runs the server.
    owner_proof: str | None = Field(None, max_length=64)


class AcceptInvitationRequest(BaseModel):
    token: str = Field(..., min_length=1, max_length=200, description="the secret at the end of the invitation link")
    label: str = Field("", max_length=identity.MAX_LABEL_LENGTH)
    user_name: str = Field(
        "", max_length=255, description="the name a new user is called after, when the invitation names none"
    )


class AcceptedInvitation(BaseModel):
    project_id: str
    # None: a link that only added a machine to its user (the web app's), which gives no role; the user has none
    # in the project now.
    role: Literal["read", "write", "admin"] | None
    new_user: bool
    client: ClientInfo


class RegisterResponse(BaseModel):
    status: Literal["registered", "pending"]
    client: ClientInfo | None = None
    registration_id: str | None = None
    registration_url: str | None = None
    verification_code: str | None = None
    expires_at_ms: int | None = None
    poll_interval_sec: float | None = None


class RegistrationStatus(BaseModel):
    status: Literal["pending", "registered", "expired"]


class GoogleCredential(BaseModel):
    credential: str = Field(..., min_length=1, max_length=8192)
    verification_code: str = Field(..., min_length=1, max_length=32)


class GoogleRegistrationResult(BaseModel):
    status: Literal["registered"]
    user: str
    client_id: str
    label: str


@router.post("/clients/register", response_model=RegisterResponse)
def register(body: RegisterRequest, request: Request, caller: OptionalCaller, context: ContextDep) -> RegisterResponse:
    """Register the signing client. The signature proves the caller holds the private key of the client id.

    The server's owner (on this machine, with an ``owner_proof`` made from its owner-token file): linked to the
    owner at once. Without the token, in local mode: 403 ``owner_proof_required``, naming the file in
    ``owner_token_file`` (only the owner can read it; everyone else joins by invitation).
    Google mode: a pending registration is created; a person opens ``registration_url`` and signs in.
    """
    if caller.client_id is None:
        raise AuthenticationFailed(
            "registration must be signed with the client's private key", error_code="missing_signature"
        )
    label = identity.clean_label(body.label)
    mode = context.settings.registration_mode
    with context.db.transaction() as session:
        existing = session.get(identity.Client, caller.client_id)
        if existing is not None:
            return RegisterResponse(
                status="registered", client=ClientInfo(**identity.client_info(session, existing, context.server_url))
            )
        if body.owner_proof is not None and mode != "none":
            _check_owner_proof(request, context, caller.client_id, body.owner_proof)
            owner = identity.ensure_local_owner(session)
            client = identity.link_client(session, owner, caller.client_id, label)
            return RegisterResponse(
                status="registered", client=ClientInfo(**identity.client_info(session, client, context.server_url))
            )
        if mode == "local":
            if not _is_loopback(request):
                raise Forbidden(
                    "this server registers its owner from its own machine only; others join with an invitation "
                    "from its admin (kachery-cloud-init --invite LINK)",
                    error_code="registration_disabled",
                )
            raise Forbidden(
                "only the Unix user who runs this server registers here without an invitation (by reading "
                f"{context.owner_token_file}); anyone else: ask its admin for an invitation "
                "(kachery-cloud-server admin invite PROJECT --role write), then run kachery-cloud-init --invite LINK",
                error_code="owner_proof_required",
                fields={"owner_token_file": str(context.owner_token_file)},
            )
        if mode == "google":
            registration = identity.start_registration(
                session,
                caller.client_id,
                label,
                context.settings.registration_ttl_sec,
                address=caller.address,
                max_per_address=context.settings.max_pending_registrations_per_address,
            )
            return RegisterResponse(
                status="pending",
                registration_id=registration.id,
                registration_url=f"{context.server_url}/register/{registration.id}",
                verification_code=registration.verification_code,
                expires_at_ms=registration.expires_at_ms,
                poll_interval_sec=2.0,
            )
    raise Forbidden(
        "this server does not register clients itself; ask its administrator to run "
        f"'kachery-cloud-server admin register-client {caller.client_id} --user <you>'",
        error_code="registration_disabled",
    )


@router.get("/registrations/{registration_id}", response_model=RegistrationStatus)
def registration_status(registration_id: str, caller: OptionalCaller, context: ContextDep) -> RegistrationStatus:
    """Polled by ``kachery-cloud-init`` until a person has signed in; only the registering client may ask."""
    with context.db.transaction() as session:
        registration = identity.get_registration(session, registration_id)
        if caller.client_id != registration.client_id:
            raise Forbidden(
                "only the client being registered may poll its registration", error_code="not_your_registration"
            )
        return RegistrationStatus(status=identity.registration_state(registration))


@router.post("/registrations/{registration_id}/google", response_model=GoogleRegistrationResult)
def complete_with_google(registration_id: str, body: GoogleCredential, context: ContextDep) -> GoogleRegistrationResult:
    """Called by the registration page with the ID token Google Identity Services gave the browser."""
    if context.google is None:
        raise Forbidden("Google sign-in is not configured on this server", error_code="registration_disabled")
    with context.db.transaction() as session:
        # Checked before the token, and before any user is made: a bad link or code links nothing.
        registration = identity.open_registration(session, registration_id)
        code_ok = identity.check_verification_code(registration, body.verification_code)
    if not code_ok:
        raise Forbidden(
            "that is not the code kachery-cloud-init printed; check it and try again",
            error_code="wrong_verification_code",
        )
    google_identity = context.google.verify(body.credential)
    with context.db.transaction() as session:
        user = identity.user_for_google_identity(session, google_identity, context.settings.default_storage_quota_bytes)
        client = identity.complete_registration(session, registration_id, user)
        return GoogleRegistrationResult(status="registered", user=user.name, client_id=client.id, label=client.label)


@router.get("/clients/me", response_model=ClientInfo)
def me(caller: RegisteredCaller, context: ContextDep) -> ClientInfo:
    """The calling client, its user, default project and memberships."""
    with context.db.transaction() as session:
        client = session.get(identity.Client, caller.client_id)
        if client is None:  # removed between authentication and here
            raise InvalidRequest("client was removed")
        return ClientInfo(**identity.client_info(session, client, context.server_url))


@router.post("/invitations/accept", response_model=AcceptedInvitation)
def accept_invitation(body: AcceptInvitationRequest, caller: OptionalCaller, context: ContextDep) -> AcceptedInvitation:
    """Use a one-time invitation link (``kachery-cloud-init --invite LINK``): the signing client is registered as
    the invitation's user (made if new) with its role in its project; an already registered client's user gets
    the role. Used, expired and unknown links: 409 ``invitation_used``, 410 ``invitation_expired``, 404
    ``invitation_not_found``."""
    if caller.client_id is None:
        raise AuthenticationFailed(
            "accepting an invitation must be signed with the client's private key", error_code="missing_signature"
        )
    label = identity.clean_label(body.label)
    with context.db.transaction() as session:
        accepted = invitations.accept(session, body.token, caller.client_id, label, suggested_name=body.user_name)
        return AcceptedInvitation(
            project_id=accepted.project_id,
            role=accepted.role,  # type: ignore[arg-type]
            new_user=accepted.new_user,
            client=ClientInfo(**identity.client_info(session, accepted.client, context.server_url)),
        )


def _check_owner_proof(request: Request, context: ContextDep, client_id: str, proof: str) -> None:
    # From this machine only: the token file never leaves it, and nothing else should ever send a proof.
    if not _is_loopback(request) or not is_owner_proof(context.owner_token, context.server_id, client_id, proof):
        raise Forbidden(
            "that is not a proof made from this server's owner token (the server reads its owner-token file when "
            "it starts: restart it if the file was changed); run kachery-cloud-init on the server's machine as the "
            "user who runs it",
            error_code="wrong_owner_token",
        )


def _is_loopback(request: Request) -> bool:
    return request.client is not None and is_loopback_host(request.client.host)
