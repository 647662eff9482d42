"""Job entry points, one per pipeline stage: ``python -m jobs.<stage>`` or ``python jobs/<stage>.py``."""
