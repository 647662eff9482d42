"""Accounting: what a run recomputed, reused and saved, and what the change stage cost
(docs/change-aware.md §Accounting).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.change.decision import ChipDecision

__all__ = ["COST_RATIO_WARN", "Accounting"]

COST_RATIO_WARN = 0.2  # change-stage CPU-seconds per model-second saved above this: the stage eats the savings


@dataclass
class Accounting:
    """Counters of one run (summed over scenes), with the derived ``saved_frac`` and cost ratio."""

    chips_total: int = 0
    chips_valid: int = 0
    chips_recomputed: int = 0
    chips_reused: int = 0
    chips_forced_age: int = 0
    chips_forced_version: int = 0
    chips_newly_valid_driven: int = 0
    chips_audited: int = 0
    recomputed_by_reason: dict[str, int] = field(default_factory=dict)
    reused_by_reason: dict[str, int] = field(default_factory=dict)
    model_seconds: float = 0.0
    audit_seconds: float = 0.0
    change_stage_cpu_seconds: float = 0.0
    bytes_read: int = 0
    scenes: int = 0
    scenes_skipped: int = 0

    @property
    def saved_frac(self) -> float:
        """1 - recomputed/total (0 for an empty run)."""
        return 0.0 if self.chips_total == 0 else 1.0 - self.chips_recomputed / self.chips_total

    @property
    def model_seconds_saved(self) -> float:
        """Model time the reused chips would have cost, at this run's per-chip rate."""
        if self.chips_recomputed == 0:
            return 0.0
        return self.model_seconds / self.chips_recomputed * self.chips_reused

    @property
    def cost_ratio(self) -> float | None:
        """Change-stage CPU-seconds over model-seconds saved (``None`` when nothing was saved or measured)."""
        saved = self.model_seconds_saved
        return None if saved <= 0 else self.change_stage_cpu_seconds / saved

    def add(self, decisions: Sequence[ChipDecision], tau_chip: float) -> None:
        """Count one scene's decisions."""
        self.scenes += 1
        self.chips_total += len(decisions)
        self.chips_valid += sum(d.valid_frac > 0 for d in decisions)
        recomputed = Counter(d.reason for d in decisions if d.recompute)
        reused = Counter(d.reason for d in decisions if not d.recompute)
        self.chips_recomputed += sum(recomputed.values())
        self.chips_reused += sum(reused.values())
        self.chips_forced_age += recomputed.get("age", 0)
        self.chips_forced_version += recomputed.get("version", 0)
        self.chips_newly_valid_driven += sum(
            d.reason == "changed" and d.changed_frac - d.newly_valid_frac <= tau_chip for d in decisions
        )
        for reason, n in recomputed.items():
            self.recomputed_by_reason[reason] = self.recomputed_by_reason.get(reason, 0) + n
        for reason, n in reused.items():
            self.reused_by_reason[reason] = self.reused_by_reason.get(reason, 0) + n

    def cost_warning(self) -> str | None:
        """The warning to log when the change stage costs more than 0.2 of the model time it saved, else ``None``."""
        ratio = self.cost_ratio
        if ratio is not None and ratio > COST_RATIO_WARN:
            return (
                f"the change stage took {self.change_stage_cpu_seconds:.2f} CPU-s for {self.model_seconds_saved:.2f} "
                f"model-s saved (ratio {ratio:.2f} > {COST_RATIO_WARN}); on this data a full recompute is about as "
                "cheap: check the chip size, or run without --incremental"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able counters plus ``saved_frac``, ``model_seconds_saved`` and ``cost_ratio``."""
        out: dict[str, Any] = {k: v for k, v in self.__dict__.items()}
        out["saved_frac"] = round(self.saved_frac, 6)
        out["model_seconds_saved"] = round(self.model_seconds_saved, 4)
        ratio = self.cost_ratio
        out["cost_ratio"] = None if ratio is None else round(ratio, 4)
        out["cost_warning"] = self.cost_warning() is not None
        for key in ("model_seconds", "audit_seconds", "change_stage_cpu_seconds"):
            out[key] = round(out[key], 4)
        return out

    def summary_line(self) -> str:
        """One line for the console."""
        return (
            f"incremental: {self.chips_recomputed} of {self.chips_total} chips recomputed, {self.chips_reused} reused "
            f"(saved {self.saved_frac:.1%}; reused {self.reused_by_reason}; recomputed {self.recomputed_by_reason}), "
            f"{self.chips_audited} audited; model {self.model_seconds:.2f} s, change stage "
            f"{self.change_stage_cpu_seconds:.2f} CPU-s"
        )
