r"""Safe identifiers: turn a raw STAC item id into a deterministic name that is safe as a file or URL path segment.

Item ids come from catalogs we do not control and may contain ``/``, ``\``, ``..``, spaces or control characters.
They never become raw paths: :func:`safe_id` keeps ``[A-Za-z0-9._-]``, replaces everything else with ``_``, and
appends a short blake2b hash of the raw id whenever that changed anything, so two different raw ids never collide.
A safe raw id that already ends like a hashed one (``-`` plus 10 hex digits) is hashed too: otherwise a catalog
could name an item ``a_b-<hash of "a/b">`` and overwrite the shard of the item ``a/b``.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["MAX_SAFE_ID_LENGTH", "is_safe_id", "safe_id"]

MAX_SAFE_ID_LENGTH = 200  # well under the 255-byte file-name limit of ext4/xfs/S3 key segments, with room for suffixes

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HASH_BYTES = 5  # 10 hex chars: 2**40 ids before a 50% collision chance among sanitised ids
_HASHED_SUFFIX = re.compile(rf"-[0-9a-f]{{{2 * _HASH_BYTES}}}$")


def _digest(raw: str) -> str:
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=_HASH_BYTES).hexdigest()


def is_safe_id(value: str) -> bool:
    """True when ``value`` is usable as-is: ``[A-Za-z0-9][A-Za-z0-9._-]*``, no ``..``, at most 200 characters."""
    return bool(_SAFE.fullmatch(value)) and ".." not in value and len(value) <= MAX_SAFE_ID_LENGTH


def safe_id(raw: str) -> str:
    """Return a filesystem- and URL-safe name for a raw item id; deterministic, unchanged when already safe.

    Examples: ``"S2B_MSIL2A_..._T47XML"`` stays as is; ``"../evil"`` becomes ``"evil-<hash>"``; ``"a/b"`` becomes
    ``"a_b-<hash>"``, which differs from the safe id of ``"a_b"`` (which stays ``"a_b"``).

    Args:
        raw: the item id exactly as the catalog gives it.

    Raises:
        ValueError: ``raw`` is not a string.
    """
    if not isinstance(raw, str):
        raise ValueError(f"Item id must be a string, got {type(raw).__name__} {raw!r}.")
    if is_safe_id(raw) and not _HASHED_SUFFIX.search(raw):
        return raw
    cleaned = _UNSAFE.sub("_", raw)
    cleaned = re.sub(r"\.{2,}", "_", cleaned).strip("._-")  # no "..", no leading dots/underscores
    cleaned = cleaned[: MAX_SAFE_ID_LENGTH - 2 * _HASH_BYTES - 1] or "item"
    return f"{cleaned}-{_digest(raw)}"
