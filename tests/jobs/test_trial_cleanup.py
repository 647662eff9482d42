"""jobs/_trial_cleanup.py on a real local Ray: a run's placement group is removed once, an unknown id is a no-op."""

from __future__ import annotations

from typing import Any

from jobs._trial_cleanup import release_placement_group


def test_release_removes_a_live_group_once(ray_local: Any) -> None:
    from ray.util.placement_group import placement_group, placement_group_table

    group = placement_group([{"CPU": 1}])
    assert group.wait(30)
    assert release_placement_group(group.id.hex(), "test run")
    assert placement_group_table(group)["state"] == "REMOVED"
    assert not release_placement_group(group.id.hex(), "test run")  # already gone: nothing to do
    assert not release_placement_group("", "test run") and not release_placement_group(None, "test run")
