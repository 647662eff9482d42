"""Errors of :mod:`rsvheat.ssl`; each subclasses the closest builtin and names the failing object."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["NonFiniteLossError", "UnknownOptionError"]


class UnknownOptionError(ValueError):
    """A configuration block names keys the component does not know (e.g. a typo in a user's YAML).

    Args:
        block: what was being configured, e.g. ``"masking"``.
        unknown: the keys given that are not known.
        known: every key the block accepts.
    """

    def __init__(self, block: str, unknown: Iterable[str], known: Iterable[str]) -> None:
        self.block = block
        self.unknown = tuple(sorted(unknown))
        self.known = tuple(sorted(known))
        super().__init__(
            f"Unknown {block} option(s) {', '.join(map(repr, self.unknown))}; known {block} options: "
            f"{', '.join(self.known)}. Fix the spelling or remove them (see docs/pretraining.md)."
        )


class NonFiniteLossError(FloatingPointError):
    """A loss term came out NaN or infinite (docs/pretraining.md §4 asserts finiteness instead of clipping).

    Args:
        term: the loss term, e.g. ``"fre"``.
        detail: what was non-finite and where.
    """

    def __init__(self, term: str, detail: str) -> None:
        self.term = term
        super().__init__(
            f"Loss term {term!r} is not finite: {detail}. Check the inputs for NaN/inf (invalid pixels must be "
            "marked in `valid`, not left as NaN) and lower the learning rate if the model diverged."
        )
