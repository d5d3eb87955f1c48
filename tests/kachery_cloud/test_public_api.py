"""The public surface is exactly ``__all__``; importing the package stays light."""

import inspect
import subprocess
import sys

import kachery_cloud as kcl
from kachery_cloud import errors

EXPECTED = {
    "__version__",
    # files
    "store_file", "store_files", "store_file_local", "link_file", "load_file", "load_files", "load_file_info",
    "load_bytes", "cat_file",
    # objects
    "store_text", "store_json", "store_npy", "store_pkl",
    "store_text_local", "store_json_local", "store_npy_local", "store_pkl_local",
    "load_text", "load_json", "load_npy", "load_pkl",
    # mutables
    "set_mutable", "get_mutable", "get_mutable_info", "delete_mutable", "delete_mutable_folder", "list_mutables",
    "MutableInfo",
    "set_mutable_local", "get_mutable_local", "delete_mutable_local", "delete_mutable_folder_local",
    # feeds
    "create_feed", "load_feed", "Feed", "FeedMessage",
    # tasks
    "request_task", "TaskClient", "TaskStatus", "TaskBackend", "report_task_progress",
    # configuration and identity
    "get_kachery_cloud_dir", "init", "get_client_id", "get_client_info", "get_project_id",
    # errors
    "KacheryCloudError", "ConfigError", "InvalidArgumentError", "InvalidURIError", "InvalidMutableKeyError",
    "SerializationError", "UnsafePickleError", "LocalFileError", "NotFoundError", "IntegrityError",
    "NotConnectedError", "ServerUnreachableError", "ServerError", "AuthenticationError", "NotRegisteredError",
    "PermissionDeniedError", "RateLimitedError", "EphemeralModeError", "QuotaExceededError",
    "VersionConflictError", "TaskError", "TaskTimeout",
}  # fmt: skip


def test_all_is_sorted_and_exactly_the_expected_names() -> None:
    assert kcl.__all__ == sorted(kcl.__all__)
    assert set(kcl.__all__) == EXPECTED


def test_nothing_public_leaks_beyond_all() -> None:
    public = {name for name in dir(kcl) if not name.startswith("_") and not inspect.ismodule(getattr(kcl, name))}
    assert public == EXPECTED - {"__version__"}


def test_every_error_class_is_exported_and_derives_from_the_root() -> None:
    classes = {obj for _, obj in inspect.getmembers(errors, inspect.isclass) if obj.__module__ == errors.__name__}
    assert {c.__name__ for c in classes} <= EXPECTED
    assert all(issubclass(c, kcl.KacheryCloudError) for c in classes)


def test_errors_also_derive_from_the_builtin_a_caller_would_catch() -> None:
    assert issubclass(kcl.InvalidURIError, ValueError)
    assert issubclass(kcl.InvalidMutableKeyError, ValueError)
    assert issubclass(kcl.SerializationError, TypeError)
    assert issubclass(kcl.LocalFileError, OSError)
    assert issubclass(kcl.NotFoundError, FileNotFoundError)
    assert issubclass(kcl.ServerUnreachableError, ConnectionError)
    assert issubclass(kcl.PermissionDeniedError, PermissionError)
    assert issubclass(kcl.EphemeralModeError, PermissionError)


def test_importing_the_package_does_not_load_heavy_or_server_dependencies() -> None:
    code = (
        "import sys, kachery_cloud; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'numpy', 'tqdm', 'click', 'boto3', 'fastapi', 'requests', 'sqlalchemy', 'tenacity', 'cryptography', "
        "'api_server'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
