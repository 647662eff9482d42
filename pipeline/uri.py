"""One way from a URI to a filesystem, and one atomic writer, for every file the pipeline writes or reads.

:func:`resolve` turns a local path, ``file://`` or ``s3://`` URI into a pyarrow filesystem and the path on it; an S3
endpoint comes from the argument, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (a local S3 such as moto or
MinIO), exactly as :class:`pipeline.manifest.OutputStore` and the shard readers need it.

:func:`atomic_output` is the only writer of outputs (docs/ingest-lease.md, "Writes"): readers see the old file or the
whole new one, never a torn file. Locally it writes a temporary name in the target directory, fsyncs it, renames it
over the target and fsyncs the directory; on an object store one completed PUT (or multipart upload) is atomic, so it
writes the object directly and an exception aborts the upload.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

__all__ = [
    "TMP_MARKER",
    "atomic_output",
    "create_exclusive",
    "is_object_store",
    "redact_href",
    "resolve",
    "s3_endpoint",
    "s3_filesystem",
    "write_atomic",
]

# Temporary files carry this in their name; listings skip them (a crash mid-write leaves one behind, never a file).
TMP_MARKER = ".tmp-"


def s3_endpoint(endpoint: str | None = None) -> str | None:
    """The S3 endpoint URL to use: ``endpoint``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS."""
    return endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem; the endpoint as in :func:`s3_endpoint` (e.g. ``http://127.0.0.1:9000``)."""
    url = s3_endpoint(endpoint)
    kwargs: dict[str, Any] = {}
    if url:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def resolve(
    uri: str, filesystem: pafs.FileSystem | None = None, *, endpoint: str | None = None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path on it for a local path, ``file://`` or ``s3://`` URI.

    Args:
        uri: ``/abs/path``, ``rel/path``, ``file:///abs/path`` or ``s3://bucket/key``; with ``filesystem``, a path on
            that filesystem may also be given as is (``bucket/key`` on S3).
        filesystem: the filesystem to use instead of inferring one from the scheme.
        endpoint: S3 endpoint URL (default: ``AWS_ENDPOINT_URL``).

    Raises:
        ValueError: an unsupported scheme (not local, ``file`` or ``s3``).
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower() if len(parts.scheme) > 1 else ""  # "C:" is a drive letter, not a scheme
    if scheme == "":
        path = uri
    elif scheme == "file":
        path = parts.path
    elif scheme == "s3":
        path = f"{parts.netloc}{parts.path}".rstrip("/")
    else:
        raise ValueError(f"URI {uri!r} has unsupported scheme {parts.scheme!r}; use a local path, file:// or s3://.")
    if filesystem is not None:
        return filesystem, path
    if scheme == "s3":
        return s3_filesystem(endpoint), path
    return pafs.LocalFileSystem(), os.path.abspath(path)


def is_object_store(fs: pafs.FileSystem) -> bool:
    """True for stores where one completed PUT is atomic (S3, GCS): objects are written directly, never renamed."""
    kinds = tuple(k for k in (getattr(pafs, "S3FileSystem", None), getattr(pafs, "GcsFileSystem", None)) if k)
    return isinstance(fs, kinds)


def _fsync_path(path: str, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:
        if directory:  # some filesystems do not open directories; the file itself is durable already
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_output(fs: pafs.FileSystem, path: str) -> Iterator[pafs.NativeFile]:
    """A writable stream whose content appears at ``path`` only when the block exits without an exception.

    Local (and other renaming) filesystems: a temporary sibling, fsynced, then moved over ``path`` (durable before
    visible: a committed manifest never points at bytes still in the page cache). Object stores: the object itself
    (the upload completes on close; an exception aborts it).
    """
    direct = is_object_store(fs)
    parent, name = os.path.split(path)
    target = path if direct else f"{parent}/.{name}{TMP_MARKER}{uuid.uuid4().hex[:12]}"
    if not direct and parent:
        fs.create_dir(parent, recursive=True)
    try:
        stream = fs.open_output_stream(target)
        try:
            yield stream
        except BaseException:
            if direct and hasattr(stream, "abort"):
                stream.abort()  # pyarrow >= 19: the multipart upload is dropped, no object appears
            raise
        finally:
            if not stream.closed:
                stream.close()
        if not direct:
            if isinstance(fs, pafs.LocalFileSystem):
                _fsync_path(target)
            fs.move(target, path)
            if isinstance(fs, pafs.LocalFileSystem):
                _fsync_path(parent or ".", directory=True)
    except BaseException:
        if not direct:
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.delete_file(target)
        raise


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(fs, path) as stream:
        stream.write(data)


def create_exclusive(fs: pafs.FileSystem, path: str, data: bytes, *, endpoint: str | None = None) -> bool:
    """Create ``path`` with ``data`` only if it does not exist yet; ``True`` when this call created it.

    Exactly one of several concurrent callers wins (docs/ingest-lease.md, "Create-if-absent"):

    * local: the whole content is written and fsynced under a temporary name, then ``os.link``-ed to ``path``, which
      fails if ``path`` exists (never a torn file, atomic on POSIX filesystems, NFS included);
    * S3: ``PutObject`` with ``If-None-Match: *`` (a conditional write: S3 answers 412 when the key exists).

    Raises:
        OSError: the store refused the write for another reason (permissions, unreachable endpoint).
        ValueError: a filesystem that supports neither protocol.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        parent, name = os.path.split(path)
        os.makedirs(parent or ".", exist_ok=True)
        tmp = f"{parent}/.{name}{TMP_MARKER}{uuid.uuid4().hex[:12]}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync_path(parent or ".", directory=True)
        return True
    if isinstance(fs, getattr(pafs, "S3FileSystem", ())):
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = path.partition("/")
        client = boto3.client("s3", endpoint_url=s3_endpoint(endpoint))
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise OSError(f"Cannot create s3://{path}: {code or status}: {err}") from None
        except BotoCoreError as err:
            raise OSError(f"Cannot create s3://{path}: {err}") from None
        return True
    raise ValueError(f"create_exclusive supports local paths and S3, not {type(fs).__name__}.")


def redact_href(href: str) -> str:
    """An href safe to log or store: no query string (signed tokens), fragment or user info (credentials)."""
    parts = urlsplit(href)
    if not parts.scheme or len(parts.scheme) == 1:
        return href.split("?", 1)[0]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
