"""kachery-cloud project API server: identity, projects, presigned URLs; blob bytes pass
through it only for small blobs sent inline.

Layers (each imports only from those above it): settings → db → storage → auth → services → routes → web →
app + cli. See shared/DESIGN.md §2-3. The only client code imported here is kachery_cloud's pure layer 2
(request signing, hashing, URIs).
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("kachery-cloud")
except _PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"
