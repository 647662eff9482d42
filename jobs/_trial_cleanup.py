"""Release the workers of Tune trials that end (docs/finetune-job.md "Trials").

Ray Train V2 removes a run's worker placement group when its controller shuts the worker group down, as it does when
``jobs/pretrain.py``'s ``fit`` returns. A Tune trial's controller is killed instead (when the trial ends, or when ASHA
stops it early), and Train then relies on its ``PlacementGroupCleaner`` actor, which watches the controller through
the state API: that needs the dashboard, and finds the cluster by address discovery, which fails when other Ray
instances run on the machine. On this project's local and test clusters the group then stays reserved until the job
ends, and later trials and jobs wait forever for its CPUs and GPUs. Each trial's rank 0 therefore reports the id of
its placement group (``PLACEMENT_GROUP_KEY``), and the Tune callback :class:`ReleaseTrialWorkers` removes it with
:func:`release_placement_group` when the trial ends, however it ended. Removing an already removed group is a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

__all__ = ["PLACEMENT_GROUP_KEY", "ReleaseTrialWorkers", "current_placement_group_hex", "release_placement_group"]

log = logging.getLogger("jobs.finetune")
PLACEMENT_GROUP_KEY = "worker_placement_group"


def current_placement_group_hex() -> str:
    """The hex id of the placement group this worker runs in ('' outside one)."""
    from ray.util import get_current_placement_group

    group = get_current_placement_group()
    return "" if group is None else group.id.hex()


def release_placement_group(group_hex: str | None, what: str) -> bool:
    """Remove the placement group ``group_hex`` (reported by a run's rank 0) unless it is gone already.

    Args:
        group_hex: the id from :func:`current_placement_group_hex`; empty or None: nothing to do.
        what: the run, for the log line (``"trial 1a2b"``).

    Returns:
        True when this call removed it.
    """
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    if not group_hex:
        return False
    group = PlacementGroup(PlacementGroupID(bytes.fromhex(group_hex)))
    if placement_group_table(group).get("state") in (None, "REMOVED"):
        return False
    log.info("%s ended: releasing its workers' placement group %s", what, group_hex[:12])
    remove_placement_group(group)
    return True


class ReleaseTrialWorkers(Callback):
    """Remove a finished or stopped trial's worker placement group (see the module docstring)."""

    def _release(self, trial: Any) -> None:
        release_placement_group((trial.last_result or {}).get(PLACEMENT_GROUP_KEY), f"trial {trial.trial_id}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial finished or was stopped by the scheduler."""
        self._release(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial failed."""
        self._release(trial)
