"""Server layer 4: Google ID tokens (from Google Identity Services on the registration page), verified with
google-auth against Google's public certificates (or, in tests, a local certs endpoint)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AuthenticationFailed

_GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")


@dataclass(frozen=True)
class GoogleIdentity:
    sub: str
    email: str
    name: str | None


class GoogleTokenVerifier:
    def __init__(self, client_id: str, certs_url: str) -> None:
        self.client_id = client_id
        self.certs_url = certs_url

    def verify(self, token: str) -> GoogleIdentity:
        """The signed-in person; raises :class:`AuthenticationFailed` (``invalid_id_token``) for any bad token."""
        import google.auth.exceptions
        import google.auth.transport.requests
        from google.oauth2 import id_token

        try:
            claims = id_token.verify_token(
                token,
                google.auth.transport.requests.Request(),
                audience=self.client_id,
                certs_url=self.certs_url,
                clock_skew_in_seconds=10,
            )
        except (ValueError, google.auth.exceptions.GoogleAuthError) as e:
            raise AuthenticationFailed(f"the Google ID token was refused: {e}", error_code="invalid_id_token") from None
        if claims.get("iss") not in _GOOGLE_ISSUERS:
            raise AuthenticationFailed("the ID token was not issued by Google", error_code="invalid_id_token")
        email = claims.get("email")
        if not email or claims.get("email_verified") is not True:
            raise AuthenticationFailed(
                "the Google account has no verified email address", error_code="invalid_id_token"
            )
        return GoogleIdentity(sub=str(claims["sub"]), email=str(email).lower(), name=claims.get("name"))
