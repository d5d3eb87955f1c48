"""The exception tree of kachery_cloud. Imports nothing from the package, so every layer may use it.

    KacheryCloudError
    ├── ConfigError                  bad config.yaml or environment variable
    ├── InvalidArgumentError         (ValueError) a parameter the caller got wrong
    │   ├── InvalidURIError          a malformed or unsupported URI
    │   └── InvalidMutableKeyError   a key outside the mutable key grammar
    ├── SerializationError           (TypeError) an object that cannot be stored as JSON / npy / pkl
    │   └── UnsafePickleError        a pickle that would import something outside the allow-list
    ├── LocalFileError               (OSError) a source or destination file we cannot use
    ├── NotFoundError                (FileNotFoundError) content that is not available
    ├── IntegrityError               bytes whose SHA-1 is not the one they were stored under
    ├── EphemeralModeError           (PermissionError) a write from a client in read-only ephemeral mode
    ├── TaskError                    a requested task failed or was cancelled (the worker's message)
    ├── TaskTimeout                  (TimeoutError) a requested task did not end within timeout_sec
    ├── NotConnectedError            could not talk to the API server (base of ServerUnreachableError)
    │   └── ServerUnreachableError   (ConnectionError) the API server did not answer (the URL is in the message)
    └── ServerError                  the API server refused or failed a request (``error_code``, ``status``)
        ├── AuthenticationError      the server did not accept this client's signature, clock or nonce
        ├── NotRegisteredError       this client is not registered with the server: run kachery-cloud-init
        ├── PermissionDeniedError    (PermissionError) not a member of the project, or the role is too low
        ├── QuotaExceededError       storing would take the project over its storage quota
        ├── VersionConflictError     a compare-and-swap found the mutable changed since it was read
        └── RateLimitedError         too many requests, still refused after waiting as the server asked

Each class also derives from the builtin a generic ``except`` clause would use, so callers who catch
``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations


class KacheryCloudError(Exception):
    """Root of every error raised on purpose by kachery_cloud."""


class ConfigError(KacheryCloudError):
    """The configuration (config.yaml or an environment variable) is invalid."""


class InvalidArgumentError(KacheryCloudError, ValueError):
    """A parameter has a wrong value or type."""


class InvalidURIError(InvalidArgumentError):
    """A URI is malformed or uses an unsupported scheme."""


class InvalidMutableKeyError(InvalidArgumentError):
    """A mutable key does not follow the key grammar."""


class SerializationError(KacheryCloudError, TypeError):
    """An object cannot be serialized (or deserialized) in the requested format."""


class UnsafePickleError(SerializationError):
    """A pickle refers to a global outside the allow-list and was refused."""


class LocalFileError(KacheryCloudError, OSError):
    """A local file given by the caller is missing, not a regular file, or cannot be read or written."""


class NotFoundError(KacheryCloudError, FileNotFoundError):
    """The requested content is not available."""


class IntegrityError(KacheryCloudError):
    """Bytes do not have the SHA-1 they are supposed to have."""


class EphemeralModeError(KacheryCloudError, PermissionError):
    """A write was attempted in ephemeral mode (``KACHERY_CLOUD_EPHEMERAL``), where the client is read-only."""


class TaskError(KacheryCloudError):
    """A requested task ended without a result: its function raised (the message holds the worker's traceback),
    its workers were lost too often, or it was cancelled. ``task_id``, ``task_name`` and ``state`` ("error" or
    "cancelled") say which and how."""

    def __init__(self, message: str, *, task_id: str = "", task_name: str = "", state: str = "error") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task_name = task_name
        self.state = state


class TaskTimeout(KacheryCloudError, TimeoutError):
    """A requested task did not end within ``timeout_sec``. The task itself goes on (``task_id`` names it): ask
    again later, or cancel it."""

    def __init__(self, message: str, *, task_id: str = "", task_name: str = "", state: str = "pending") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task_name = task_name
        self.state = state


class NotConnectedError(KacheryCloudError):
    """The operation needs an API server and this client is not connected to one."""


class ServerUnreachableError(NotConnectedError, ConnectionError):
    """The API server could not be reached (refused, timed out, DNS failure) even after retries."""


class ServerError(KacheryCloudError):
    """The API server answered with an error.

    ``error_code`` is the server's stable code (for example ``project_not_found``); ``status`` the HTTP status;
    ``fields`` the rest of the server's error answer (what some errors say to do next).
    """

    def __init__(
        self, message: str, *, error_code: str = "server_error", status: int = 500, fields: dict | None = None
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status = status
        self.fields = fields or {}


class AuthenticationError(ServerError):
    """The server refused the request's signature, timestamp or nonce."""


class NotRegisteredError(ServerError):
    """This client's id is not registered with the server."""


class PermissionDeniedError(ServerError, PermissionError):
    """The client's user lacks the membership or role the request needs."""


class QuotaExceededError(ServerError):
    """Storing the content would take the project over its storage quota."""


class VersionConflictError(ServerError):
    """``set_mutable``/``delete_mutable`` with ``expected_version``: someone changed the mutable since it was read.
    Read it again (``get_mutable_info``), decide, and retry with the new version."""


class RateLimitedError(ServerError):
    """The server kept answering 429 Too Many Requests."""


def is_passing_failure(e: BaseException) -> bool:
    """A failure that may pass if the same call is made again later: the server could not be reached, was
    overloaded (429) or failed (5xx). Long waits (tasks, feeds) ride these out until their deadline."""
    if isinstance(e, ServerUnreachableError):
        return True
    return isinstance(e, ServerError) and (e.status >= 500 or e.status == 429)
