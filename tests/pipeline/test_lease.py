"""pipeline.lease: owner, expiry, heartbeat and takeover on a local directory and on a real S3 server (moto)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import LeaseHeldError, LeaseLostError
from pipeline.lease import acquire_lease, current_lease, lease_dir, verify_lease
from pipeline.manifest import OutputStore


class Clock:
    """A settable wall clock (POSIX seconds), so expiry is tested without sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OutputStore:
    if request.param == "local":
        return OutputStore.open(str(tmp_path / "out"))
    moto = request.getfixturevalue("moto_s3")
    for key, value in moto.boto_env.items():
        monkeypatch.setenv(key, value)
    return OutputStore.open(f"s3://{moto.bucket}/lease-{tmp_path.name}")


def test_second_owner_is_refused_with_owner_and_expiry(store: OutputStore) -> None:
    clock = Clock()
    with acquire_lease(store, "run-a", ttl=60, clock=clock, renew_every=0) as lease:
        assert (lease.owner, lease.generation) == ("run-a", 1)
        with pytest.raises(LeaseHeldError, match=r"owner 'run-a' \(host .*, pid \d+\), generation 1, until "
                                                 r"2027-01-15T08:01:00Z"):
            with acquire_lease(store, "run-b", ttl=60, clock=clock, renew_every=0):
                pass
        verify_lease(store, "run-a", 1, clock=clock)
    record = current_lease(store)
    assert record is not None and record.released and record.owner == "run-a"
    with acquire_lease(store, "run-b", ttl=60, clock=clock, renew_every=0) as lease:  # released: no wait
        assert lease.generation == 2


def test_crashed_holder_expires_and_is_taken_over(store: OutputStore) -> None:
    clock = Clock()
    crashed = acquire_lease(store, "crashed", ttl=60, clock=clock, renew_every=0)
    held = crashed.__enter__()  # never exits: the process "died" holding the lease
    clock.now += 61
    with acquire_lease(store, "next", ttl=60, clock=clock, renew_every=0) as lease:
        assert lease.generation == 2
        with pytest.raises(LeaseLostError, match="taken over by owner 'next'"):
            held.check()
        with pytest.raises(LeaseLostError, match="no longer holds the lease"):
            verify_lease(store, "crashed", 1, clock=clock)  # its actors stop committing too
        with pytest.raises(LeaseLostError):
            held.renew()
    assert len(store.list_files(lease_dir(), ".json")) <= 2  # old generations are cleaned up


def test_renewal_keeps_a_long_run_alive(store: OutputStore) -> None:
    clock = Clock()
    with acquire_lease(store, "long", ttl=60, clock=clock, renew_every=0) as lease:
        for _ in range(5):
            clock.now += 40
            lease.renew()  # what the heartbeat thread does every ttl / 3
            with pytest.raises(LeaseHeldError):
                with acquire_lease(store, "other", ttl=60, clock=clock, renew_every=0):
                    pass
        lease.check()
        clock.now += 61  # renewals stopped (a stalled process): the lease lapses
        with pytest.raises(LeaseLostError, match="expired"):
            lease.check()


def test_heartbeat_thread_renews(tmp_path: Path) -> None:
    store = OutputStore.open(str(tmp_path))
    with acquire_lease(store, "beat", ttl=3.0, renew_every=0.1) as lease:
        first = current_lease(store)
        time.sleep(0.5)
        later = current_lease(store)
        assert first is not None and later is not None and later.expires_at > first.expires_at
        lease.check()


def test_same_owner_takes_over_its_own_live_lease(store: OutputStore) -> None:
    """A retried scheduled run (same deterministic submission id) need not wait for its crashed try's expiry."""
    clock = Clock()
    crashed_try = acquire_lease(store, "ingest-s2-20261123T0600", ttl=600, clock=clock, renew_every=0)
    crashed_try.__enter__()  # kept referenced: never released
    with pytest.raises(LeaseHeldError):
        with acquire_lease(store, "another-slot", ttl=600, clock=clock, renew_every=0):
            pass
    with acquire_lease(store, "ingest-s2-20261123T0600", ttl=600, clock=clock, renew_every=0) as lease:
        assert lease.generation == 2


def test_a_waiting_run_gets_the_lease_when_the_holder_releases_it(store: OutputStore) -> None:
    """``wait``: a scheduled run that overlaps the end of the previous one waits instead of exiting."""
    clock = Clock()
    holder = acquire_lease(store, "slot-0600", ttl=600, clock=clock, renew_every=0)
    holder.__enter__()
    naps: list[float] = []

    def sleep(seconds: float) -> None:  # the holder finishes during the third nap
        naps.append(seconds)
        clock.now += seconds
        if len(naps) == 3:
            holder.__exit__(None, None, None)

    with acquire_lease(store, "slot-1200", ttl=600, clock=clock, renew_every=0, wait=60, poll_every=10,
                       sleep=sleep) as lease:
        assert (lease.owner, lease.generation) == ("slot-1200", 2)
    assert naps == [10, 10, 10]


def test_a_waiting_run_gives_up_after_its_wait(store: OutputStore) -> None:
    clock = Clock()
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        clock.now += seconds

    with acquire_lease(store, "slot-0600", ttl=600, clock=clock, renew_every=0):
        with pytest.raises(LeaseHeldError, match=r"owner 'slot-0600' .* Still held after waiting 25 s\."):
            with acquire_lease(store, "slot-1200", ttl=600, clock=clock, renew_every=0, wait=25, poll_every=10,
                               sleep=sleep):
                pass
    assert naps == [10, 10, 5]  # never past the deadline
    with pytest.raises(ValueError, match="wait must be >= 0"):
        with acquire_lease(store, "x", wait=-1):
            pass


def test_racing_runs_get_exactly_one_lease(tmp_path: Path) -> None:
    """Six threads race for a local lease (os.link is atomic): one wins, five are refused naming the winner."""
    store = OutputStore.open(str(tmp_path))
    winners: list[str] = []
    refused: list[str] = []
    kept: list[Any] = []
    barrier = threading.Barrier(6)

    def run(name: str) -> None:
        barrier.wait()
        try:
            manager = acquire_lease(store, name, ttl=60, renew_every=0)
            kept.append(manager)  # a collected context manager would release the lease
            winners.append(manager.__enter__().owner)
        except LeaseHeldError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=run, args=(f"run-{k}",)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 5
    assert all(f"owner {winners[0]!r}" in message for message in refused)
    record = current_lease(store)
    assert record is not None and record.owner == winners[0] and record.generation == 1


def test_a_run_that_loses_the_create_race_rereads_and_is_refused(
    store: OutputStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race, made deterministic: run B read "no lease" just before run A created generation 1.

    B's create of generation 1 must fail (``os.link`` / S3 ``If-None-Match: *``), and B must re-read and be refused.
    (moto's conditional PUT is not atomic under concurrent threads, so the S3 race is staged, not threaded.)
    """
    import pipeline.lease as lease_module

    real = lease_module.current_lease
    calls = {"n": 0}
    held: list[Any] = []  # keeps run A's context manager alive (a collected one would release the lease)

    def stale_first(store_: OutputStore, name: str = "ingest") -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # B's first read happened before A's create
            held.append(acquire_lease(store_, "run-a", ttl=60, renew_every=0))
            held[-1].__enter__()
            return None
        return real(store_, name)

    monkeypatch.setattr(lease_module, "current_lease", stale_first)
    with pytest.raises(LeaseHeldError, match="owner 'run-a'"):
        with acquire_lease(store, "run-b", ttl=60, renew_every=0):
            pass
    assert calls["n"] >= 2 and real(store).owner == "run-a"


def test_ttl_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        with acquire_lease(OutputStore.open(str(tmp_path)), "x", ttl=0):
            pass


def test_lease_on_an_unwritable_s3_bucket_is_an_os_error(moto_s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in moto_s3.boto_env.items():
        monkeypatch.setenv(key, value)
    store = OutputStore.open("s3://no-such-bucket-rsvheat/out")
    with pytest.raises(OSError):
        with acquire_lease(store, "x", ttl=60, renew_every=0):
            pass


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    """A crashed driver on this machine (its pid is gone) does not block the next run until the expiry."""
    import subprocess
    import sys

    store = OutputStore.open(str(tmp_path))
    script = ("import sys; from pipeline.lease import acquire_lease; from pipeline.manifest import OutputStore; "
              "cm = acquire_lease(OutputStore.open(sys.argv[1]), 'crashed', ttl=600, renew_every=0); "
              "cm.__enter__(); import os; os._exit(0)")  # dies holding the lease: no release, no clean-up
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])
    held = current_lease(store)
    assert held is not None and held.owner == "crashed" and not held.released  # the process exited holding it
    with acquire_lease(store, "next", ttl=600, renew_every=0) as lease:
        assert lease.generation == 2
    with acquire_lease(store, "mine", ttl=600, renew_every=0):  # a live holder (this process) is never taken over
        with pytest.raises(LeaseHeldError):
            with acquire_lease(store, "other", ttl=600, renew_every=0):
                pass
