"""Change-aware processing of new scenes: reference state, validity, co-registration, change scores, threshold and
morphology, chip decision, accounting and drift audit (docs/change-aware.md). Pure numpy/scipy; no Ray, no torch.
"""

from pipeline.change.accounting import Accounting
from pipeline.change.audit import AuditReport, audit_report, audit_sample
from pipeline.change.config import IncrementalConfig, incremental_config
from pipeline.change.decision import CacheEntry, ChipDecision, ChipWindow, decide_chips
from pipeline.change.reference import ReferenceState, day_number
from pipeline.change.stage import ChangeResult, run_change_stage

__all__ = [
    "Accounting",
    "AuditReport",
    "CacheEntry",
    "ChangeResult",
    "ChipDecision",
    "ChipWindow",
    "IncrementalConfig",
    "ReferenceState",
    "audit_report",
    "audit_sample",
    "day_number",
    "decide_chips",
    "incremental_config",
    "run_change_stage",
]
