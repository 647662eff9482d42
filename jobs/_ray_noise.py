"""Quiet the error-level line Ray prints on every healthy ingest, and nothing else.

Ray's C++ core worker writes its log lines straight to file descriptor 2 of the driver, where neither ``logging``
nor ``warnings`` can filter them. Checked on Ray 2.60 (every driver log of this machine's runs, ``ray.init()`` local
and joined to a cluster, exiting with and without ``ray.shutdown()``), exactly one ``E``-level line appears in a
healthy run, at start-up of the actor pool:

    [... E pid tid] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches(ItemChipper))' and ID: '...'
    has constructor arguments in the object store and max_restarts > 0. If the arguments in the object store go out
    of scope or are lost, the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 ...

It is harmless here: Ray Data always passes an actor pool's UDF by object reference and restarts pool actors, and the
driver keeps that reference alive for the whole run, so the restart it warns about works. No error-level line was
printed at shutdown in those runs, so none is filtered.

:func:`quiet_ray_noise` routes fd 2 through a pipe for the duration of a CLI run and drops exactly the lines that
match :data:`HARMLESS` (anchored on Ray's own log prefix ``[time E pid tid] file.cc:line:``); every other byte is
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
    re.compile(_PREFIX + r"core_worker\.cc:\d+: Actor with class name: 'MapWorker\([^']*\)' and ID: '[0-9a-f]+' has "
               r"constructor arguments in the object store and max_restarts > 0\."),
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
        os.dup2(saved, 2)  # closes our write end of the pipe: the pump sees EOF and drains
        thread.join(timeout=10)
        if not thread.is_alive():  # a child process that inherited the pipe keeps the pump (and `saved`) alive
            os.close(saved)
