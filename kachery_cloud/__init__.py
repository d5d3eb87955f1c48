"""kachery_cloud: share scientific data by content hash.

``import kachery_cloud as kcl``; then ``uri = kcl.store_json({"a": 1})`` and ``kcl.load_json(uri)``.
Everything public is listed in ``__all__``; every other module is an implementation detail.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .errors import (
    AuthenticationError,
    ConfigError,
    EphemeralModeError,
    IntegrityError,
    InvalidArgumentError,
    InvalidMutableKeyError,
    InvalidURIError,
    KacheryCloudError,
    LocalFileError,
    NotConnectedError,
    NotFoundError,
    NotRegisteredError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    SerializationError,
    ServerError,
    ServerUnreachableError,
    TaskError,
    TaskTimeout,
    UnsafePickleError,
    VersionConflictError,
)
from .feeds import Feed, FeedMessage, create_feed, load_feed
from .files import cat_file, link_file, load_bytes, load_file, load_file_info, load_files, store_file_local
from .mutables import (
    MutableInfo,
    delete_mutable,
    delete_mutable_folder,
    delete_mutable_folder_local,
    delete_mutable_local,
    get_mutable,
    get_mutable_info,
    get_mutable_local,
    list_mutables,
    set_mutable,
    set_mutable_local,
)
from .objects import (
    load_json,
    load_npy,
    load_pkl,
    load_text,
    store_json,
    store_json_local,
    store_npy,
    store_npy_local,
    store_pkl,
    store_pkl_local,
    store_text,
    store_text_local,
)
from .registration import get_client_id, get_client_info, get_project_id, init
from .storing import store_file, store_files
from .task_backend import TaskBackend, report_task_progress
from .tasks import TaskClient, TaskStatus, request_task


def get_kachery_cloud_dir() -> str:
    """The client directory in use: ``$KACHERY_CLOUD_DIR`` or ``~/.kachery-cloud``."""
    from .config import kachery_cloud_dir

    return str(kachery_cloud_dir())


try:
    __version__ = _version("kachery-cloud")
except _PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "EphemeralModeError",
    "Feed",
    "FeedMessage",
    "IntegrityError",
    "InvalidArgumentError",
    "InvalidMutableKeyError",
    "InvalidURIError",
    "KacheryCloudError",
    "LocalFileError",
    "MutableInfo",
    "NotConnectedError",
    "NotFoundError",
    "NotRegisteredError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitedError",
    "SerializationError",
    "ServerError",
    "ServerUnreachableError",
    "TaskBackend",
    "TaskClient",
    "TaskError",
    "TaskStatus",
    "TaskTimeout",
    "UnsafePickleError",
    "VersionConflictError",
    "__version__",
    "cat_file",
    "create_feed",
    "delete_mutable",
    "delete_mutable_folder",
    "delete_mutable_folder_local",
    "delete_mutable_local",
    "get_client_id",
    "get_client_info",
    "get_kachery_cloud_dir",
    "get_mutable",
    "get_mutable_info",
    "get_mutable_local",
    "get_project_id",
    "init",
    "link_file",
    "list_mutables",
    "load_bytes",
    "load_feed",
    "load_file",
    "load_file_info",
    "load_files",
    "load_json",
    "load_npy",
    "load_pkl",
    "load_text",
    "report_task_progress",
    "request_task",
    "set_mutable",
    "set_mutable_local",
    "store_file",
    "store_file_local",
    "store_files",
    "store_json",
    "store_json_local",
    "store_npy",
    "store_npy_local",
    "store_pkl",
    "store_pkl_local",
    "store_text",
    "store_text_local",
]
