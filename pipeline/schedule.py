"""Schedule slots: which scheduled run a job is, and a durable record that the slot is done (docs/operations.md).

A scheduler fires a job once per *slot* (``0 */6 * * *``: 00:00, 06:00, 12:00, 18:00 UTC). A slot is named by its
scheduled time in ISO 8601 basic form (``20261123T060000Z``). ``--schedule-slot`` gives it either explicitly (an
RFC 3339 instant, for a scheduler that knows the tick) or as ``every:PERIOD`` (``every:6h``): the start of the
``PERIOD``-long UTC period the run started in, for schedulers that cannot pass the tick to the job (KubeRay's
RayCronJob copies one template into every RayJob). ``PERIOD`` must divide a day, so the periods are the ticks of the
cron schedule ``0 */H * * *`` (or ``*/M * * * *``) in UTC.

When a slot's run has committed its outputs, the job records it with create-if-absent at
``state/schedule/{dataset_version}/{slot}.json``; a later run of the same slot (a retry, a resubmission, a
catch-up burst after an operator outage) reads the record and exits without work.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.ids import safe_id
from pipeline.manifest import OutputStore
from pipeline.times import parse_datetime

__all__ = ["SlotRecord", "period_of", "read_slot", "record_slot", "resolve_slot", "slot_id", "slot_path"]

_DAY_MINUTES = 24 * 60
_PERIOD = re.compile(r"(\d+)([mhd])")
_UNIT_MINUTES = {"m": 1, "h": 60, "d": _DAY_MINUTES}


def _period_minutes(text: str) -> int:
    match = _PERIOD.fullmatch(text.strip().lower())
    minutes = int(match.group(1)) * _UNIT_MINUTES[match.group(2)] if match else 0
    if minutes <= 0 or _DAY_MINUTES % minutes:
        raise ValueError(
            f"--schedule-slot every:{text}: the period must be minutes, hours or 1d dividing a day evenly (15m, 30m, "
            "1h, 2h, 3h, 4h, 6h, 8h, 12h, 1d), so the slots are the ticks of a cron schedule such as '0 */6 * * *' "
            "in UTC; for any other schedule pass the slot's time, e.g. --schedule-slot 2026-11-23T06:00:00Z."
        )
    return minutes


def period_of(spec: str) -> timedelta | None:
    """The period of an ``every:PERIOD`` slot spec, ``None`` for an explicit time.

    Raises:
        ValueError: a period that does not divide a day.
    """
    return timedelta(minutes=_period_minutes(spec[len("every:"):])) if spec.startswith("every:") else None


def resolve_slot(spec: str, now: datetime) -> datetime:
    """The slot a run belongs to: ``spec`` as an RFC 3339 instant, or ``every:PERIOD`` floored from ``now`` (UTC).

    Args:
        spec: ``2026-11-23T06:00:00Z`` or ``every:6h``.
        now: when the run started (aware).

    Raises:
        ValueError: ``spec`` is neither form, or its period does not divide a day; the message shows both forms.
    """
    period = period_of(spec)
    if period is not None:
        minutes = period // timedelta(minutes=1)
        start = now.astimezone(UTC).replace(second=0, microsecond=0)
        midnight = start.replace(hour=0, minute=0)
        elapsed = (start - midnight) // timedelta(minutes=1)
        return midnight + timedelta(minutes=elapsed - elapsed % minutes)
    try:
        return parse_datetime(spec, "--schedule-slot")
    except ValueError as err:
        raise ValueError(f"{err} Or pass every:PERIOD (e.g. every:6h) to use the period the run started in.") from None


def slot_id(slot: datetime) -> str:
    """``20261123T060000Z``: the slot's name in records, lease owners and logs."""
    return slot.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def slot_path(dataset_version: str, slot: datetime) -> str:
    """Where a slot's record lives, relative to the output root."""
    return f"state/schedule/{safe_id(dataset_version)}/{slot_id(slot)}.json"


@dataclass(frozen=True)
class SlotRecord:
    """A finished slot, as stored (JSON).

    Attributes:
        slot: the slot's time (RFC 3339).
        dataset_version: the dataset version the run wrote.
        owner: the run's lease owner (its submission id).
        run_id: the run's id (its snapshot name).
        finished_at: when the outputs were committed (RFC 3339).
        exit_code: the run's exit status (0, or 3 when some items failed; those are retried by the next slot).
        items_committed, items_failed, chips_written: what the run did.
    """

    slot: str
    dataset_version: str
    owner: str
    run_id: str
    finished_at: str
    exit_code: int
    items_committed: int
    items_failed: int
    chips_written: int

    def describe(self) -> str:
        """``run 'x' (finished 2026-11-23T06:41:07Z, exit status 0, 12 items committed, 0 failed)``."""
        return (
            f"run {self.owner!r} (finished {self.finished_at}, exit status {self.exit_code}, "
            f"{self.items_committed} items committed, {self.items_failed} failed)"
        )


def read_slot(store: OutputStore, dataset_version: str, slot: datetime) -> SlotRecord | None:
    """The record of ``slot`` in ``dataset_version``, or ``None`` when no run finished it."""
    rel = slot_path(dataset_version, slot)
    if not store.exists(rel):
        return None
    data: dict[str, Any] = json.loads(store.read_bytes(rel))
    return SlotRecord(**data)


def record_slot(store: OutputStore, record: SlotRecord) -> bool:
    """Record a finished slot (create-if-absent); ``False`` when the slot was already recorded (the first stays)."""
    rel = slot_path(record.dataset_version, parse_datetime(record.slot))
    return store.create(rel, (json.dumps(asdict(record), sort_keys=True) + "\n").encode())

