"""Release the workers of trials that ASHA stops (docs/finetune-job.md "Trials").

When Tune stops a trial early it kills the trial's actor; Ray Train V2 then relies on its ``PlacementGroupCleaner``
actor to free the trial's worker placement group, and that actor watches the controller through the state API,
which needs the dashboard. On a cluster without one (this project's local clusters and the test clusters) the
placement group stays reserved until the job ends, so every stopped trial keeps its workers' CPUs and GPUs and later
trials wait forever. Each trial's rank 0 therefore reports the id of its placement group, and this Tune callback
removes it when the trial ends, however it ended. Removing an already removed group is a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

__all__ = ["PLACEMENT_GROUP_KEY", "ReleaseTrialWorkers", "current_placement_group_hex"]

log = logging.getLogger("jobs.finetune")
PLACEMENT_GROUP_KEY = "worker_placement_group"


def current_placement_group_hex() -> str:
    """The hex id of the placement group this worker runs in ('' outside one)."""
    from ray.util import get_current_placement_group

    group = get_current_placement_group()
    return "" if group is None else group.id.hex()


class ReleaseTrialWorkers(Callback):
    """Remove a finished or stopped trial's worker placement group (see the module docstring)."""

    def _release(self, trial: Any) -> None:
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

        group_hex = (trial.last_result or {}).get(PLACEMENT_GROUP_KEY)
        if not group_hex:
            return
        group = PlacementGroup(PlacementGroupID(bytes.fromhex(group_hex)))
        if placement_group_table(group).get("state") in (None, "REMOVED"):
            return
        log.info("trial %s ended: releasing its workers' placement group %s", trial.trial_id, group_hex[:12])
        remove_placement_group(group)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial finished or was stopped by the scheduler."""
        self._release(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial failed."""
        self._release(trial)
