"""Quiet the error-level lines Ray prints on every healthy run, and nothing else.

Ray's C++ core worker writes some ``E``-level lines straight to file descriptor 2 of the driver, where neither
``logging`` nor ``warnings`` can filter them. In a healthy ingest these are:

* ``core_worker.cc: Actor with class name: 'MapWorker(MapBatches(ItemChipper))' ... has constructor arguments in the
  object store and max_restarts > 0`` — Ray Data always passes an actor pool's UDF by object reference and restarts
  pool actors; the driver keeps the reference alive for the whole run, so the restart it warns about works;
* at shutdown, ``core_worker_process.cc``/``core_worker.cc`` lines saying the connection to the raylet or GCS was
  lost or is being shut down while the driver exits, and ``raylet_client`` / ``gcs_client`` "Failed to ... connection
  closed" lines printed while the local cluster stops with the driver.

:func:`quiet_ray_noise` routes fd 2 through a pipe for the duration of a CLI run and drops exactly the lines that
match :data:`HARMLESS` (anchored on Ray's own log prefix, ``[time E pid tid] file.cc:line:``); every other byte is
forwarded unchanged, in order.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

__all__ = ["HARMLESS", "is_harmless", "quiet_ray_noise"]

_PREFIX = r"^\[[^\]]* E \d+ \d+\] "
HARMLESS: tuple[re.Pattern[str], ...] = (
    re.compile(_PREFIX + r"core_worker\.cc:\d+: Actor with class name: '[^']*' and ID: '[0-9a-f]+' has constructor "
               r"arguments in the object store and max_restarts > 0\."),
    re.compile(_PREFIX + r"core_worker(_process)?\.cc:\d+: .*(The core worker has already been shutdown|"
               r"Lost connection with the (raylet|GCS)|raylet is dead|Raylet is terminated).*"),
    re.compile(_PREFIX + r"(raylet_client|gcs_client|gcs_rpc_client|normal_task_submitter)\.(cc|h):\d+: .*"
               r"(connection (refused|closed)|Connection reset by peer|Failed to connect to GCS).*during shutdown.*"),
)


def is_harmless(line: str) -> bool:
    """True when ``line`` is one of Ray's known-harmless error-level lines (:data:`HARMLESS`)."""
    return any(pattern.search(line) for pattern in HARMLESS)


@contextlib.contextmanager
def quiet_ray_noise() -> Iterator[None]:
    """Filter fd 2 (the process's stderr, C++ writers included) through :func:`is_harmless` inside the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter): nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            pending = b""
            while chunk := source.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(line + b"\n" for line in lines if not is_harmless(line.decode(errors="replace")))
                if out:
                    os.write(saved, out)
            if pending and not is_harmless(pending.decode(errors="replace")):
                os.write(saved, pending)

    thread = threading.Thread(target=pump, name="ray-noise-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF and drains
        thread.join(timeout=10)
        os.close(saved)
