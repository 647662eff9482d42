"""pipeline.schedule: slot resolution (explicit or floored to a period) and the create-if-absent slot record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.manifest import OutputStore
from pipeline.schedule import SlotRecord, read_slot, record_slot, resolve_slot, slot_id, slot_path


@pytest.mark.parametrize(
    ("spec", "now", "expected"),
    [
        ("every:6h", datetime(2026, 11, 23, 6, 0, tzinfo=UTC), "20261123T060000Z"),  # the tick itself
        ("every:6h", datetime(2026, 11, 23, 11, 59, 59, 999999, tzinfo=UTC), "20261123T060000Z"),
        ("every:6h", datetime(2026, 11, 23, 12, 0, tzinfo=UTC), "20261123T120000Z"),
        ("every:6h", datetime(2026, 11, 23, 14, 30, tzinfo=UTC).astimezone(), "20261123T120000Z"),  # any zone
        ("every:15m", datetime(2026, 11, 23, 23, 59, tzinfo=UTC), "20261123T234500Z"),
        ("every:1d", datetime(2026, 11, 23, 23, 59, tzinfo=UTC), "20261123T000000Z"),
        ("every:24h", datetime(2026, 11, 23, 0, 0, tzinfo=UTC), "20261123T000000Z"),
        ("2026-11-23T06:00:00Z", datetime(2030, 1, 1, tzinfo=UTC), "20261123T060000Z"),  # explicit: now is ignored
        ("2026-11-23T07:00:00+01:00", datetime(2030, 1, 1, tzinfo=UTC), "20261123T060000Z"),
        ("20261123T0600Z", datetime(2030, 1, 1, tzinfo=UTC), "20261123T060000Z"),  # what `date -u +%Y%m%dT%H00Z` gives
    ],
)
def test_resolve_slot(spec: str, now: datetime, expected: str) -> None:
    assert slot_id(resolve_slot(spec, now)) == expected


def test_every_tick_of_a_period_maps_to_itself_for_the_whole_period() -> None:
    """The slots of ``every:6h`` are the ticks of ``0 */6 * * *`` (UTC): a run started any time before the next
    tick belongs to the last one, and no two ticks share a slot."""
    ticks = [datetime(2026, 11, 23, tzinfo=UTC) + timedelta(hours=6 * n) for n in range(8)]
    for tick in ticks:
        for delay in (timedelta(0), timedelta(minutes=15), timedelta(hours=6) - timedelta(seconds=1)):
            assert resolve_slot("every:6h", tick + delay) == tick
    assert len({slot_id(t) for t in ticks}) == len(ticks)


@pytest.mark.parametrize("spec", ["every:7h", "every:0m", "every:2d", "every:100m", "every:six", "every:"])
def test_periods_that_do_not_divide_a_day_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"dividing a day evenly .* pass the slot's time"):
        resolve_slot(spec, datetime(2026, 1, 1, tzinfo=UTC))


def test_slot_record_is_created_once(tmp_path: Path) -> None:
    store = OutputStore.open(str(tmp_path / "out"))
    slot = datetime(2026, 11, 23, 6, tzinfo=UTC)
    assert read_slot(store, "v1", slot) is None
    record = SlotRecord(slot="2026-11-23T06:00:00Z", dataset_version="v1", owner="ingest-a", run_id="r1",
                        finished_at="2026-11-23T06:40:00Z", exit_code=0, items_committed=3, items_failed=0,
                        chips_written=12)
    assert record_slot(store, record)
    assert not record_slot(store, SlotRecord(**{**record.__dict__, "owner": "ingest-b"}))  # the first one stays
    assert read_slot(store, "v1", slot) == record
    assert read_slot(store, "v2", slot) is None  # per dataset version
    assert slot_path("v1", slot) == "state/schedule/v1/20261123T060000Z.json"
    assert record.describe() == ("run 'ingest-a' (finished 2026-11-23T06:40:00Z, exit status 0, 3 items committed, "
                                 "0 failed)")
