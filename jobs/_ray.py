"""The one way every job joins Ray: the cluster of ``ray job submit`` (``RAY_ADDRESS``), or a local one."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["OBJECT_STORE_SHARE", "fits_object_store", "init_ray", "run_storage"]

OBJECT_STORE_SHARE = 0.25  # data decoded once into the object store may take at most this share of it


def init_ray() -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit``) or start a local one without a dashboard.

    Idempotent: a process that already called ``ray.init`` (a test's session cluster) keeps its connection.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(include_dashboard=False, configure_logging=False)


def run_storage(root: str, s3_endpoint: str | None) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem or None)`` for a ``RunConfig`` rooted at ``root``.

    A local root becomes an absolute path; ``s3://`` with a custom endpoint (a MinIO or other S3-compatible server) gets
    its own ``pyarrow.fs.S3FileSystem`` and a bucket-relative path; any other URI is passed to Ray as is.
    """
    if root.startswith("s3://") and s3_endpoint:
        from urllib.parse import urlsplit

        import pyarrow.fs as pafs

        parts = urlsplit(s3_endpoint)
        fs = pafs.S3FileSystem(endpoint_override=parts.netloc, scheme=parts.scheme or "https")
        return root[len("s3://"):].rstrip("/"), fs
    if "://" not in root:
        return os.path.abspath(os.path.expanduser(root)), None
    return root, None


def fits_object_store(nbytes: int) -> bool:
    """Whether ``nbytes`` of decoded blocks (> 0) fit in :data:`OBJECT_STORE_SHARE` of the cluster's object store.

    The one rule by which the jobs decide to decode a dataset once (``materialize`` or a feed cache) instead of
    streaming it each epoch.
    """
    import ray

    return 0 < nbytes <= OBJECT_STORE_SHARE * ray.available_resources().get("object_store_memory", 0)
