"""The one way every job joins Ray: the cluster of ``ray job submit`` (``RAY_ADDRESS``), or a local one."""

from __future__ import annotations

import os

__all__ = ["init_ray"]


def init_ray() -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit``) or start a local one without a dashboard.

    Idempotent: a process that already called ``ray.init`` (a test's session cluster) keeps its connection.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(include_dashboard=False, configure_logging=False)
