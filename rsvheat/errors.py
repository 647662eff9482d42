"""Model-side errors of :mod:`rsvheat`; each subclasses the closest builtin and names the failing object."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BandCountMismatchError",
    "BandMatchError",
    "DecayNotAvailableError",
    "StatsMismatchError",
    "UnknownModalityError",
]


class BandCountMismatchError(ValueError):
    """An input's band count differs from the stem of its modality.

    Args:
        modality: modality name.
        expected: band count of that modality's stem.
        given: band count of the input.
    """

    def __init__(self, modality: str, expected: int, given: int) -> None:
        self.modality = modality
        self.expected = expected
        self.given = given
        super().__init__(
            f"Modality {modality!r} expects {expected} bands but the input has {given} "
            f"(x.shape[1] == {given}); select the {expected} bands of the modality config, or pass the right "
            "`modality=`."
        )


class UnknownModalityError(ValueError):
    """A modality name that the model has no stem for.

    Args:
        modality: the name given.
        available: the model's modalities.
    """

    def __init__(self, modality: str, available: Iterable[str]) -> None:
        self.modality = modality
        self.available = tuple(available)
        super().__init__(
            f"Unknown modality {modality!r}; this model has stems for {', '.join(map(repr, self.available))}. "
            "Pass one of them, or build the model with in_chans={...} naming this modality."
        )


class DecayNotAvailableError(RuntimeError):
    """The HCO decay cannot be computed because the FVE / to_k were dropped for inference."""


class StatsMismatchError(ValueError):
    """A checkpoint's normalisation stats differ from (or are missing for) the data it is about to see.

    Args:
        checkpoint_hash: ``stats_hash`` stored in the checkpoint (None if it has none).
        dataset_hash: ``stats_hash`` of the dataset (None if it has none).
        checkpoint_dataset_version: dataset version the checkpoint was trained on.
        dataset_version: version of the dataset about to be used.
    """

    def __init__(
        self,
        checkpoint_hash: str | None,
        dataset_hash: str | None,
        checkpoint_dataset_version: str | None = None,
        dataset_version: str | None = None,
    ) -> None:
        self.checkpoint_hash = checkpoint_hash
        self.dataset_hash = dataset_hash
        trained = f" (trained on dataset {checkpoint_dataset_version!r})" if checkpoint_dataset_version else ""
        data = f"dataset {dataset_version!r} stats" if dataset_version else "dataset stats"
        if checkpoint_hash is None:
            problem = (
                f"Checkpoint{trained} records no stats_hash, so its normalisation is unknown; "
                f"{data} {dataset_hash!r}"
            )
        elif dataset_hash is None:
            problem = f"Checkpoint stats {checkpoint_hash!r}{trained} cannot be checked: the {data} have no stats_hash"
        else:
            problem = f"Checkpoint stats {checkpoint_hash!r}{trained} != {data} {dataset_hash!r}"
        super().__init__(
            f"{problem}. Normalise the data with the checkpoint's stats (meta['stats']), re-run `jobs/stats.py` so "
            "both use the same stats, or pass `--allow-stats-mismatch` to proceed anyway."
        )



class BandMatchError(ValueError):
    """A pretrained checkpoint has no stem whose bands cover the data's bands.

    Args:
        source: the checkpoint (path or name) for the message.
        data_bands: the bands of the data to fine-tune on, in input order.
        stems: the checkpoint's band names per stem.
        min_overlap: the fraction of data bands a stem must provide.
    """

    def __init__(self, source: str, data_bands: Iterable[str], stems: dict[str, list[str]], min_overlap: float) -> None:
        self.source = source
        self.data_bands = tuple(data_bands)
        self.stems = stems
        listing = "; ".join(f"{name}: {' '.join(bands)}" for name, bands in stems.items()) or "none recorded"
        super().__init__(
            f"No stem of {source} provides at least {min_overlap:.0%} of the data's bands "
            f"{' '.join(self.data_bands)} (stems: {listing}). Ingest the data with the pretrained bands "
            "(`jobs/ingest.py --bands ...`), lower the required overlap, or fine-tune without --pretrained."
        )
