"""Safe ids: raw STAC item ids never become raw paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.ids import MAX_SAFE_ID_LENGTH, is_safe_id, safe_id

REAL_IDS = [
    "S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458",
    "S1A_IW_GRDH_1SDV_20240419T045904_20240419T045916_053498_067DF2_rtc",
    "LC09_L2SP_089090_20240417_02_T1",
    "S2B_MSIL2A_20180204T94161_57_38",
]
HOSTILE_IDS = [
    "../evil", "a/b", "a\\b", "..", ".", "/", "", ".hidden", "with space", "tab\there", "nul\x00byte",
    "new\nline", "a..b", "../../etc/passwd", "C:\\Windows\\x", "ünïcode-id", "x" * 500, "-leading-dash", "%2e%2e%2f",
]


@pytest.mark.parametrize("raw", REAL_IDS)
def test_real_provider_ids_are_kept_verbatim(raw: str) -> None:
    assert safe_id(raw) == raw


@pytest.mark.parametrize("raw", HOSTILE_IDS)
def test_hostile_ids_become_single_safe_path_segments(raw: str, tmp_path: Path) -> None:
    result = safe_id(raw)
    assert result != raw
    assert is_safe_id(result), result
    assert len(result) <= MAX_SAFE_ID_LENGTH
    assert "/" not in result and "\\" not in result and ".." not in result and not result.startswith(".")
    target = (tmp_path / result).resolve()
    assert target.parent == tmp_path.resolve()


def test_safe_id_is_deterministic_and_collision_free_for_lookalikes() -> None:
    assert safe_id("../evil") == safe_id("../evil")
    lookalikes = ["a/b", "a\\b", "a b", "a_b", "a..b", "a//b"]
    results = [safe_id(raw) for raw in lookalikes]
    assert len(set(results)) == len(lookalikes)
    assert safe_id("a_b") == "a_b"  # already safe: unchanged, so it cannot collide with the hashed "a/b"
    assert safe_id("../evil").startswith("evil-")


def test_a_crafted_id_cannot_take_the_safe_id_of_another_item() -> None:
    hashed = safe_id("a/b")  # "a_b-<10 hex>", itself a safe-looking id
    assert safe_id(hashed) != hashed and is_safe_id(safe_id(hashed))
    assert safe_id("tile-20240419") == "tile-20240419"  # ordinary dashes and digits are kept verbatim


def test_safe_id_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        safe_id(42)  # type: ignore[arg-type]
