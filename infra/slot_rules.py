"""The schedule-slot rule: a scheduled ingest's ``--schedule-slot every:PERIOD`` must be its schedule's own period.

``jobs/ingest.py --schedule-slot every:6h`` names a run after the 6 h UTC period it starts in, and a second run of a
slot does nothing (docs/operations.md §Scheduled ingestion). That is only right when the schedule's ticks are exactly
the starts of those periods, in UTC: an hourly schedule with ``every:6h`` would make five of six runs no-ops, and a
schedule in a zone with daylight saving would shift its ticks against the UTC periods. Neither the CRD nor KubeRay can
know this, so ``python -m infra.validate`` checks it for RayCronJobs, and the tests for the CronJob fallback.
"""

from __future__ import annotations

import shlex
import zoneinfo
from datetime import UTC, datetime, timedelta

from infra.strict_schema import Violation
from pipeline.schedule import period_of

_DAY = timedelta(days=1)
_DESCRIPTORS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *"}


def _expand(field: str, low: int, high: int) -> set[int] | None:
    """The values of one numeric cron field (``*``, ``a``, ``a-b``, with ``/step``, comma lists); ``None`` if not."""
    values: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        if step_text and not step_text.isdigit():
            return None
        step = int(step_text or 1)
        if span in ("*", "?"):
            first, last = low, high
        else:
            start, _, end = span.partition("-")
            if not start.isdigit() or (end and not end.isdigit()):
                return None
            first = int(start)
            last = int(end) if end else (high if step_text else first)
        if step <= 0 or not low <= first <= last <= high:
            return None
        values.update(range(first, last + 1, step))
    return values


def daily_ticks(schedule: str) -> set[timedelta] | None:
    """A schedule's ticks as offsets from midnight, when it fires the same times every day; else ``None``."""
    text = _DESCRIPTORS.get(schedule.strip().lower(), schedule.strip())
    fields = text.split()
    if len(fields) != 5 or any(f not in ("*", "?") for f in fields[2:]):
        return None
    minutes, hours = _expand(fields[0], 0, 59), _expand(fields[1], 0, 23)
    if minutes is None or hours is None:
        return None
    return {timedelta(hours=h, minutes=m) for h in hours for m in minutes}


def schedule_slot_flag(entrypoint: str) -> str | None:
    """The value of ``--schedule-slot`` in an entrypoint, or ``None``."""
    words = shlex.split(entrypoint)
    for word, following in zip(words, [*words[1:], ""], strict=True):
        if word == "--schedule-slot":
            return following
        if word.startswith("--schedule-slot="):
            return word.split("=", 1)[1]
    return None


def _is_utc(zone: str | None) -> bool:
    if zone is None:
        return False
    try:
        tz = zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    probes = (datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 7, 15, tzinfo=UTC))
    return all(probe.astimezone(tz).utcoffset() == timedelta(0) for probe in probes)


def check_schedule_slot(schedule: object, time_zone: object, entrypoint: object, path: str) -> list[Violation]:
    """Violations of the rule for one schedule (``spec.schedule``, ``spec.timeZone``) and the job it runs."""
    if not isinstance(entrypoint, str) or not isinstance(schedule, str):
        return []
    spec = schedule_slot_flag(entrypoint)
    if spec is None:
        return []
    where = f"{path}: --schedule-slot {spec}"
    try:
        period = period_of(spec)
    except ValueError as err:
        return [Violation(path, str(err))]
    if period is None:
        return [Violation(path, f"--schedule-slot {spec} is one fixed slot: every scheduled run after the first would "
                                "find it done and do nothing; use every:PERIOD (the schedule's period)")]
    out = []
    if not _is_utc(time_zone if isinstance(time_zone, str) else None):
        out.append(Violation(path, f"{where} names UTC periods; set timeZone: Etc/UTC (got {time_zone!r})"))
    ticks = daily_ticks(schedule)
    expected = {period * n for n in range(_DAY // period)}
    if ticks != expected:
        first = sorted(expected)[:3]
        shown = ", ".join(f"{int(t.total_seconds()) // 3600:02d}:{int(t.total_seconds()) // 60 % 60:02d}"
                          for t in first)
        out.append(Violation(
            path, f"{where} needs a schedule that fires at the start of every {spec[len('every:'):]} UTC period "
                  f"({shown}, ...), e.g. '0 */6 * * *' for every:6h; {schedule!r} does not, so some runs would find "
                  "their slot done by an earlier one (or share none)"))
    return out
