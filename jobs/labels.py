"""Attach labels to an ingested dataset as side tables keyed by chip id (docs/labels.md).

Examples::

    # the real BigEarthNet multi-labels of the sample patches (an item property)
    python jobs/labels.py scene --data out/demo --name ben-multilabel --property bigearthnet:labels \
        --collection bigearthnet-s2-l2a
    # a land-cover GeoTIFF co-registered to every chip it covers (nearest; a total class remap)
    python jobs/labels.py raster --data out/demo --name worldcover --raster wc.tif --remap worldcover.yaml
    # noisy labels from each chip's own bands: spectral-index rules (pipeline/label_rules.yaml, or your copy)
    python jobs/labels.py rules --data out/demo --name rules-noisy --rules my_rules.yaml --max-ignored 0.5
    # bi-temporal pairs of repeat acquisitions (same grid cell), optionally with a change-mask raster
    python jobs/labels.py pairs --data out/s2 --name pairs --collection sentinel-2-l2a --max-days 60
    # object boxes from GeoJSON (CRS84) as clipped pixel boxes per chip
    python jobs/labels.py boxes --data out/s2 --name ships --geojson ships.geojson --class-property kind \
        --classes ship tank

Exit status: 0 on success, 2 when the label source does not fit the dataset (the message says why).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/labels.py` (also under `ray job submit --working-dir .`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
from collections.abc import Sequence

from pipeline.errors import LabelError
from pipeline.label_rules import DEFAULT_RULES, write_rule_labels
from pipeline.labels import (
    LabelSet,
    write_box_labels,
    write_change_pairs,
    write_raster_labels,
    write_scene_labels,
)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    kinds = parser.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--data", required=True, help="ingest output (local directory or s3://)")
    common.add_argument("--name", required=True, help="label set name: DATA/labels/NAME/")
    common.add_argument("--collection", help="label only this collection's chips")
    common.add_argument("--s3-endpoint", help="S3 endpoint URL; default AWS_ENDPOINT_URL")
    scene = kinds.add_parser("scene", parents=[common], allow_abbrev=False, help="classes from an item property")
    scene.add_argument("--property", required=True, help="STAC item property holding the class name(s)")
    scene.add_argument("--single-label", action="store_true", help="one class per chip (default: multi-hot)")
    scene.add_argument("--classes", nargs="+", help="class list in index order (default: values found, sorted)")
    raster = kinds.add_parser("raster", parents=[common], allow_abbrev=False, help="a class raster per chip")
    raster.add_argument("--raster", required=True,
                        help="GeoTIFF/COG of class values, or a STAC item JSON (local, http(s) or s3://)")
    raster.add_argument("--asset", help="asset key of the class raster when --raster is a STAC item")
    group = raster.add_mutually_exclusive_group(required=True)
    group.add_argument("--remap", help="YAML: classes: [...] and remap: {value: class | ignore} (must be total)")
    group.add_argument("--classes", nargs="+", help="class list when the raster already holds indices 0..K-1")
    raster.add_argument("--noisy", action="store_true", help="mark the labels noisy (e.g. a land-cover product)")
    raster.add_argument("--derived", action="store_true", help="mark the labels derived by a rule")
    raster.add_argument("--max-ignored", type=float, help="drop chips with a larger fraction of ignored pixels")
    rules = kinds.add_parser("rules", parents=[common], allow_abbrev=False, help="spectral-index rules per chip")
    rules.add_argument("--rules", default=str(DEFAULT_RULES), help="rules YAML (default: pipeline/label_rules.yaml)")
    rules.add_argument("--max-ignored", type=float, default=0.5,
                       help="drop chips with a larger fraction of ignored pixels (default 0.5)")
    pairs = kinds.add_parser("pairs", parents=[common], allow_abbrev=False, help="bi-temporal pairs of one cell")
    pairs.add_argument("--change-raster", help="raster: 1 changed, 0 unchanged, nodata unknown")
    pairs.add_argument("--max-days", type=float, help="largest gap between the two dates")
    boxes = kinds.add_parser("boxes", parents=[common], allow_abbrev=False, help="GeoJSON boxes per chip")
    boxes.add_argument("--geojson", required=True, help="FeatureCollection in CRS84")
    boxes.add_argument("--class-property", required=True, help="feature property holding the class name")
    boxes.add_argument("--classes", nargs="+", required=True, help="class list in index order")
    boxes.add_argument("--min-pixels", type=float, default=2.0, help="drop clipped boxes narrower than this")
    return parser


def _run(args: argparse.Namespace) -> LabelSet:
    common = {"collection": args.collection, "s3_endpoint": args.s3_endpoint}
    match args.kind:
        case "scene":
            return write_scene_labels(args.data, args.name, property=args.property, multilabel=not args.single_label,
                                      classes=args.classes, **common)
        case "raster":
            return write_raster_labels(args.data, args.name, raster=args.raster, classes=args.classes,
                                       remap_file=args.remap, noisy=args.noisy, derived=args.derived,
                                       max_ignored=args.max_ignored, asset=args.asset, **common)
        case "rules":
            return write_rule_labels(args.data, args.name, rules_file=args.rules, max_ignored=args.max_ignored,
                                     **common)
        case "pairs":
            if args.collection is None:
                raise LabelError("pairs need --collection: a pair joins two dates of one sensor")
            return write_change_pairs(args.data, args.name, collection=args.collection,
                                      change_raster=args.change_raster, max_days=args.max_days,
                                      s3_endpoint=args.s3_endpoint)
        case _:
            return write_box_labels(args.data, args.name, geojson=args.geojson, class_property=args.class_property,
                                    classes=args.classes, min_pixels=args.min_pixels, **common)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        label_set = _run(args)
    except (LabelError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"labels: {label_set.name} ({label_set.kind}, {len(label_set.classes)} classes) on {label_set.chips} chips "
          f"→ {args.data.rstrip('/')}/labels/{label_set.name}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
