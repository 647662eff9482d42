"""A lease on an output root: one writer at a time, with an owner, an expiry and a heartbeat (docs/ingest-lease.md).

The lease lives next to the data (``state/lease/{name}/{generation:012d}.json``) and works wherever the data does:
a local directory (NFS included) or S3. Acquiring it never needs a lock server, only *create-if-absent*
(:meth:`pipeline.manifest.OutputStore.create`: ``os.link`` locally, ``PutObject`` with ``If-None-Match: *`` on S3):

1. read the newest generation ``g`` (a listing of the lease folder);
2. if it is live (not released, not expired) and held by another owner: refuse with :class:`LeaseHeldError`;
3. otherwise create generation ``g + 1``. Only one of several racing runs can create it; the losers re-read and see
   a live lease held by the winner. A crashed run's lease is taken over once it expires, or at once when the holder
   ran on this host and its process is gone.

The holder renews its own generation file every ``ttl / 3`` seconds from a daemon thread (a heartbeat). It has lost
the lease when a newer generation exists or its expiry passed without a renewal; :meth:`Lease.check` (the driver,
before rebuilding the outputs) and :func:`verify_lease` (each actor, before committing an item) raise
:class:`LeaseLostError` then. Expiry times are wall-clock UTC: keep ``ttl`` far above the clock skew between hosts.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from pipeline.errors import LeaseHeldError, LeaseLostError
from pipeline.manifest import OutputStore
from pipeline.times import format_datetime

__all__ = [
    "DEFAULT_TTL_S",
    "Lease",
    "LeaseRecord",
    "acquire_lease",
    "current_lease",
    "default_owner",
    "lease_dir",
    "verify_lease",
]

DEFAULT_TTL_S = 600.0
_GENERATION = re.compile(r"(\d{12})\.json$")
_KEEP_GENERATIONS = 2  # the current one and its predecessor (who held the output before: useful when debugging)


@dataclass(frozen=True)
class LeaseRecord:
    """One generation of a lease, as stored (JSON).

    Attributes:
        name: what the lease guards (``"ingest"``).
        owner: who holds it: a deterministic submission id (``ingest-s2-20261123T0600``) or ``host:pid:random``.
        generation: 1, 2, ...: every acquisition creates the next one.
        acquired_at, renewed_at, expires_at: POSIX seconds (UTC wall clock).
        ttl_s: the lease's time to live; renewals push ``expires_at`` to ``now + ttl_s``.
        released: ``True`` once the holder let go (the next run need not wait for the expiry).
        host, pid: where the holder runs, for the refusal message.
    """

    name: str
    owner: str
    generation: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    ttl_s: float
    released: bool = False
    host: str = ""
    pid: int = 0

    def live(self, now: float) -> bool:
        """Held right now: not released and not expired."""
        return not self.released and now < self.expires_at

    def describe(self) -> str:
        """``owner 'x' (host h, pid p) until 2026-12-02T10:30:00Z``."""
        until = format_datetime(datetime.fromtimestamp(self.expires_at, UTC))
        where = f" (host {self.host}, pid {self.pid})" if self.host else ""
        return f"owner {self.owner!r}{where}, generation {self.generation}, until {until}"

    def to_json(self) -> bytes:
        """The stored form."""
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseRecord:
        """Parse a stored generation."""
        return cls(**json.loads(data))


def lease_dir(name: str = "ingest") -> str:
    """The folder of a lease's generation files, relative to the output root."""
    return f"state/lease/{name}"


def default_owner() -> str:
    """An owner id for this process: Ray's job submission id when run by ``ray job submit``, else host:pid:random.

    A scheduled run should pass its deterministic submission id (``ingest-s2-20261123T0600``) instead: a retry of
    the same slot then takes over its own lease at once (docs/ingest-lease.md, "Scheduled runs").
    """
    try:  # the job supervisor of `ray job submit` hands the driver its job config, submission id included
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        submission = (config.get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        submission = None
    if isinstance(submission, str) and submission:
        return submission
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _generations(store: OutputStore, name: str) -> list[tuple[int, str]]:
    found = []
    for rel in store.list_files(lease_dir(name), ".json"):
        match = _GENERATION.search(rel)
        if match:
            found.append((int(match.group(1)), rel))
    return sorted(found)


def current_lease(store: OutputStore, name: str = "ingest") -> LeaseRecord | None:
    """The newest generation of the lease (live or not), or ``None`` when no run ever took it."""
    generations = _generations(store, name)
    if not generations:
        return None
    return LeaseRecord.from_json(store.read_bytes(generations[-1][1]))


def _rel(name: str, generation: int) -> str:
    return f"{lease_dir(name)}/{generation:012d}.json"


class Lease:
    """A held lease: renews itself from a daemon thread until :meth:`release`.

    Use :func:`acquire_lease` rather than constructing one.
    """

    def __init__(self, store: OutputStore, record: LeaseRecord, clock: Callable[[], float],
                 renew_every: float) -> None:
        self.store = store
        self.record = record
        self._clock = clock
        self._renew_every = renew_every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> str:
        """Who holds the lease."""
        return self.record.owner

    @property
    def generation(self) -> int:
        """The generation this holder created."""
        return self.record.generation

    def start_heartbeat(self) -> None:
        """Renew every ``renew_every`` seconds in a daemon thread (started by :func:`acquire_lease`)."""
        if self._renew_every <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.record.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._renew_every):
            try:
                self.renew()
            except LeaseLostError:
                return
            except OSError:  # a transient store error: the next beat retries; check() reports a real expiry
                continue

    def renew(self) -> None:
        """Push the expiry to ``now + ttl``.

        Raises:
            LeaseLostError: another run took the lease over (a newer generation exists).
        """
        with self._lock:
            self._ensure_newest()
            now = self._clock()
            renewed = replace(self.record, renewed_at=now, expires_at=now + self.record.ttl_s)
            self.store.write_bytes(_rel(self.record.name, self.generation), renewed.to_json())
            self.record = renewed
            self._ensure_newest()  # a taker that read our old expiry may have created the next generation meanwhile

    def _ensure_newest(self) -> None:
        newest = current_lease(self.store, self.record.name)
        if newest is None or newest.generation != self.generation:
            self._lost = (
                f"the lease on {self.store.uri} was taken over by {newest.describe()}" if newest is not None
                else f"the lease files under {self.store.uri}/{lease_dir(self.record.name)} were removed"
            )
        if self._lost:
            raise LeaseLostError(f"{self._lost}; this run ({self.owner!r}) must stop writing.")

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless this run still holds the lease (newest generation, not expired)."""
        with self._lock:
            self._ensure_newest()
            if self._clock() >= self.record.expires_at:
                raise LeaseLostError(
                    f"The lease of {self.owner!r} on {self.store.uri} expired at "
                    f"{format_datetime(datetime.fromtimestamp(self.record.expires_at, UTC))} without a renewal (the "
                    "store was unreachable or the process stalled); another run may hold it now."
                )

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released (if still ours), so the next run need not wait."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            newest = current_lease(self.store, self.record.name)
            if newest is not None and newest.generation == self.generation:
                now = self._clock()
                done = replace(self.record, released=True, renewed_at=now, expires_at=now)
                self.store.write_bytes(_rel(self.record.name, self.generation), done.to_json())
                self.record = done


@contextmanager
def acquire_lease(
    store: OutputStore,
    owner: str,
    ttl: float = DEFAULT_TTL_S,
    *,
    name: str = "ingest",
    renew_every: float | None = None,
    clock: Callable[[], float] = time.time,
    wait: float = 0.0,
    poll_every: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Lease]:
    """Hold the lease ``name`` on ``store`` for the block; released (and the heartbeat stopped) on exit.

    Args:
        store: the output root (local or S3).
        owner: who is asking; a live lease held by the *same* owner is taken over at once (a retried submission
            with a deterministic id), by another owner it is refused.
        ttl: seconds the lease stays valid without a renewal (a crashed holder blocks others this long at most).
        name: what the lease guards; one output may hold several independent leases.
        renew_every: heartbeat period in seconds (default ``ttl / 3``; ``0`` disables the thread).
        clock: the time source (POSIX seconds).
        wait: seconds to keep trying while another owner holds the lease (``0``: refuse at once).
        poll_every: seconds between tries while waiting.
        sleep: how to wait between tries.

    Raises:
        LeaseHeldError: another owner holds a live lease (still, after ``wait``); the message names it and its expiry.
        OSError: the store cannot be written (the lease is the run's first write).
    """
    if ttl <= 0:
        raise ValueError(f"Lease ttl must be positive seconds, got {ttl}.")
    if wait < 0 or poll_every <= 0:
        raise ValueError(f"Lease wait must be >= 0 and poll_every > 0 seconds, got {wait} and {poll_every}.")
    deadline = clock() + wait
    while True:
        try:
            lease = _acquire(store, owner, ttl, name, clock)
            break
        except LeaseHeldError as err:
            remaining = deadline - clock()
            if remaining <= 0:
                if wait > 0:
                    raise LeaseHeldError(f"{err} Still held after waiting {wait:g} s.") from None
                raise
            sleep(min(poll_every, remaining))
    lease._renew_every = ttl / 3 if renew_every is None else renew_every
    lease.start_heartbeat()
    try:
        yield lease
    finally:
        lease.release()


def _acquire(store: OutputStore, owner: str, ttl: float, name: str, clock: Callable[[], float]) -> Lease:
    for _ in range(8):  # each lost race means a newer generation exists: re-read and decide again
        newest = current_lease(store, name)
        now = clock()
        if newest is not None and newest.live(now) and newest.owner != owner and not _holder_died(newest):
            raise LeaseHeldError(
                f"Output {store.uri} is being written by another run: {newest.describe()}. Wait for it to finish "
                f"(--lease-wait SECONDS waits here; a crashed holder's lease expires), or write to another --output. "
                f"Lease files: {lease_dir(name)}/."
            )
        generation = 1 if newest is None else newest.generation + 1
        record = LeaseRecord(name=name, owner=owner, generation=generation, acquired_at=now, renewed_at=now,
                             expires_at=now + ttl, ttl_s=ttl, host=socket.gethostname(), pid=os.getpid())
        if store.create(_rel(name, generation), record.to_json()):
            for old, rel in _generations(store, name)[:-_KEEP_GENERATIONS]:
                if old < generation:
                    store.delete(rel)
            return Lease(store, record, clock, 0.0)
    newest = current_lease(store, name)
    raise LeaseHeldError(f"Output {store.uri}: lost every race for the lease; newest is "
                         f"{newest.describe() if newest else 'none'}. Retry in a moment.")


def _holder_died(record: LeaseRecord) -> bool:
    """True when the holder ran on this host and its process is gone (a crash: no need to wait for the expiry).

    Holders on other hosts cannot be probed; their lease is taken over once it expires.
    """
    if record.host != socket.gethostname() or record.pid <= 0:
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def verify_lease(store: OutputStore, owner: str, generation: int, name: str = "ingest",
                 clock: Callable[[], float] = time.time) -> None:
    """For workers that commit on the holder's behalf: raise :class:`LeaseLostError` unless ``(owner, generation)``
    is still the newest, live generation.
    """
    newest = current_lease(store, name)
    if newest is None or newest.generation != generation or newest.owner != owner or not newest.live(clock()):
        raise LeaseLostError(
            f"Run {owner!r} no longer holds the lease on {store.uri} (generation {generation}); newest is "
            f"{newest.describe() if newest else 'none'}. Nothing more is committed by this run."
        )
