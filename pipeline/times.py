"""The pipeline's one timestamp parser: RFC 3339 / ISO 8601 text to an aware UTC ``datetime``.

Every timestamp the pipeline reads goes through :func:`parse_datetime`: item ``datetime``/``updated`` properties,
``--since`` and ``--datetime`` flags, and the times stored in manifests. Naive values are taken as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_datetime", "parse_datetime"]


def parse_datetime(value: str, what: str = "timestamp") -> datetime:
    """Parse RFC 3339 / ISO 8601 text (``2024-04-19T10:00:00Z``, ``2024-04-19``) as an aware UTC ``datetime``.

    Args:
        value: the text.
        what: what the value is (``"--since"``, ``"item X property `updated`"``), for the error message.

    Raises:
        ValueError: ``value`` is not a string or not an ISO 8601 timestamp; the message names ``what``.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be an RFC 3339 timestamp string, got {type(value).__name__} {value!r}.")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{what} {value!r} is not an RFC 3339 / ISO 8601 timestamp; use e.g. 2024-04-19T10:00:00Z or 2024-04-19."
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def format_datetime(value: datetime) -> str:
    """An aware ``datetime`` as RFC 3339 UTC text with a ``Z`` suffix (naive values are taken as UTC)."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")
