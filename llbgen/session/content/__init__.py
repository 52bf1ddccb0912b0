"""Local cache directories for the daemon: the session's ``containerd.services.content.v1.Content``.

``--cache-to type=local,dest=DIR`` and ``--cache-from type=local,src=DIR`` keep BuildKit's cache in
a directory on the client, in OCI image-layout form (``oci-layout``, ``index.json``,
``blobs/<alg>/<hex>``). The daemon never touches the directory itself: the client serves it as a
containerd content store over the session, and the daemon writes the cache blobs into it (export)
or reads them from it (import) through that service. The request header
``buildkit-attachable-store-id`` says which directory: ``local:`` followed by the ``dest``/``src``
attribute exactly as it was sent in the cache options. A request without the header is
INVALID_ARGUMENT, an unknown id NOT_FOUND.

What the daemon calls (BuildKit v0.32.2, containerd's content proxy as the client):

- export: ``Write`` streams, one per blob (layers, the cache config, the cache manifest): a STAT
  with the ref, expected digest and size, then WRITE messages at increasing offsets, then COMMIT.
  A blob that is already there answers ALREADY_EXISTS, which the daemon takes as done. The
  exporter response then carries the manifest's descriptor as ``cache.manifest``, and the client
  records it in ``index.json`` under a tag (``latest`` unless ``tag=`` says otherwise).
- import: ``Info`` and ``Read`` of the manifest whose digest the client resolved from
  ``index.json`` before the solve (``digest`` attribute), then of the config and layers it names.
  A directory without a usable cache (missing, no ``index.json``, no such tag, manifest blob
  absent) is left out of the request with a warning, as buildctl does; unlike buildctl, a missing
  ``src`` directory is not created.

The package, one job per module: :mod:`.store` (the OCI layout as a content store, with
:mod:`.filters`, :mod:`.times` and :mod:`.errors`), :mod:`.index` (``index.json``), :mod:`.service`
(the session service), :mod:`.local_cache` (the client's side, before and after the solve).
"""

from llbgen.session.content.errors import ContentError
from llbgen.session.content.index import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    find_in_index,
    put_in_index,
    read_index,
    referenced_blobs,
    remove_unreferenced,
)
from llbgen.session.content.local_cache import LocalCacheError, LocalCaches, parse_go_bool
from llbgen.session.content.service import CONTENT_METHODS, STORE_ID_HEADER, ContentStores
from llbgen.session.content.store import OCIStore, StoreInfo, StoreStatus, parse_digest

__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "CONTENT_METHODS",
    "ContentError",
    "ContentStores",
    "LocalCacheError",
    "LocalCaches",
    "OCIStore",
    "StoreInfo",
    "StoreStatus",
    "STORE_ID_HEADER",
    "find_in_index",
    "parse_digest",
    "parse_go_bool",
    "put_in_index",
    "read_index",
    "referenced_blobs",
    "remove_unreferenced",
]
