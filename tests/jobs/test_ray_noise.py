"""jobs/_ray_noise.py: exactly Ray's known-harmless error-level line is dropped from fd 2; everything else passes."""

from __future__ import annotations

import subprocess
import sys

from jobs._ray_noise import is_harmless
from tests.conftest import REPO_ROOT

ACTOR_LINE = (
    "[2026-12-02 10:08:23,405 E 10055 10055] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(ItemChipper))' and ID: 'fa14801f6d727ebbc96362da01000000' has constructor arguments in the "
    "object store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor "
    "restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details."
)


def test_only_the_known_line_is_harmless() -> None:
    assert is_harmless(ACTOR_LINE)
    for kept in (
        ACTOR_LINE.replace(" E ", " W "),  # another level
        ACTOR_LINE.replace("MapWorker(MapBatches(ItemChipper))", "MyActor"),  # a user's own actor
        "[2026-12-02 10:08:23,405 E 10055 10055] core_worker.cc:1234: Worker unexpectedly exits",  # a real error
        "2026-12-02 10:08:18,869 ERROR jobs.ingest: has constructor arguments in the object store",
        "Traceback (most recent call last):",
    ):
        assert not is_harmless(kept), kept


def test_filter_on_fd_2_keeps_order_and_other_lines() -> None:
    """C-level writes to fd 2 (as Ray's core worker does) are filtered; Python's own stderr lines pass in order."""
    script = (
        "import os, sys\n"
        "from jobs._ray_noise import quiet_ray_noise\n"
        "with quiet_ray_noise():\n"
        "    print('first', file=sys.stderr, flush=True)\n"
        f"    os.write(2, {(ACTOR_LINE + chr(10)).encode()!r})\n"
        "    os.write(2, b'[2026-12-02 10:08:23,405 E 1 1] core_worker.cc:9: a real error\\n')\n"
        "    print('last, no newline', file=sys.stderr, end='', flush=True)\n"
        "print(' after', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, env={"PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stderr == "first\n[2026-12-02 10:08:23,405 E 1 1] core_worker.cc:9: a real error\nlast, no newline after\n"
