#!/usr/bin/env python3
"""Generate the bad-input fixtures for the ingest failure tests: one broken item per failure mode, plus good items.

Run from the repository root to regenerate (seeded, deterministic); tests never run it, they read the committed
outputs::

    .venv/bin/python tests/data/bad/data.py

It reuses the committed synthetic COGs in ``tests/data/synthetic`` (hrefs relative to each item file) and writes
small extra rasters only where the failure needs its own pixels. ``catalog.json`` is a static STAC catalog linking:

=====================  ============================================================  ===========================
item directory         what is wrong                                                 expected failure
=====================  ============================================================  ===========================
``good-s2``            nothing (the synthetic S2B item, id suffixed ``-good``)       ingested
``good-s1``            nothing (the synthetic S1 RTC item, id suffixed ``-good``)    ingested
``truncated``          B04 is a COG cut to 40 % of its bytes                         RasterReadError (read)
``missing-asset``      no ``B04`` asset                                              AssetNotFoundError (resolve)
``unreachable``        B04 href ``http://127.0.0.1:1/x.tif`` (nothing listens)       RasterReadError (read)
``no-crs``             S1 files without a CRS and no ``proj:*`` in the item          CRSNotFoundError
``wrong-crs``          S1 item declaring ``proj:epsg: 4326`` (degrees, not metres)   CRSNotFoundError (resolve)
``all-nodata``         S1 ``vv``/``vh`` entirely -32768                              InvalidItemError (chip)
``nan``                S1 ``vv``/``vh`` entirely NaN                                 InvalidItemError (chip)
``inconsistent``       B04 lies 100 km east of the other bands                       GridMismatchError (read)
``traversal``          id ``../../escape``                                           InvalidItemError (resolve)
``slash``              id ``tiles/T18SUJ/item``                                      InvalidItemError (resolve)
``invalid-json``       ``item.json`` is not JSON                                     search-stage failure
=====================  ============================================================  ===========================

The script prints the SHA-256 of every output so a regeneration can be checked against the committed files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

ROOT = Path(__file__).resolve().parent
SYNTHETIC = ROOT.parent / "synthetic"
S2_ID = "S2B_MSIL2A_20240419T155819_R097_T18SUJ_20240419T205358"
S1_ID = "S1A_IW_GRDH_1SDV_20240419T045904_20240419T045916_053498_067DF2_rtc"
S2_DIR = SYNTHETIC / "sentinel-2-l2a" / S2_ID
S1_DIR = SYNTHETIC / "sentinel-1-rtc" / S1_ID
S1_SIZE = 96


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _relink(item: dict[str, Any], source_dir: Path, case_dir: Path) -> dict[str, Any]:
    """Point every relative asset href at the synthetic files, relative to the new item's directory."""
    out = copy.deepcopy(item)
    out["links"] = []
    for asset in out["assets"].values():
        href = asset["href"]
        if "://" not in href and not href.startswith("/"):
            target = (source_dir / href).resolve()
            asset["href"] = Path(os.path.relpath(target, case_dir)).as_posix()
    return out


def _write_item(case: str, item: dict[str, Any]) -> Path:
    case_dir = ROOT / case
    case_dir.mkdir(parents=True, exist_ok=True)
    path = case_dir / "item.json"
    path.write_text(json.dumps(item, indent=2) + "\n")
    return path


def _s1_tif(path: Path, data: np.ndarray, *, crs: str | None, transform: Affine | None) -> None:
    profile: dict[str, Any] = {
        "driver": "COG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": "float32",
        "nodata": -32768.0,
        "blocksize": 64,
        "compress": "DEFLATE",
        "overviews": "NONE",
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(np.float32), 1)


def _s1_variant(case: str, data: np.ndarray, *, crs: str | None, keep_proj: bool) -> None:
    """An S1 RTC item whose vv/vh are ``data``, with or without a CRS in the files and ``proj:*`` in the item."""
    case_dir = ROOT / case
    case_dir.mkdir(parents=True, exist_ok=True)
    base = _load(S1_DIR / "item.json")
    item = copy.deepcopy(base)
    item["id"] = f"{S1_ID}-{case}"
    item["links"] = []
    transform = Affine(*base["properties"]["proj:transform"][:6])
    for key in ("vv", "vh"):
        _s1_tif(case_dir / f"{key}.tif", data, crs=crs, transform=transform)
        item["assets"][key]["href"] = f"./{key}.tif"
    if not keep_proj:
        for key in [k for k in item["properties"] if k.startswith("proj:")]:
            del item["properties"][key]
    _write_item(case, item)


def main() -> None:
    """Write every fixture and ``catalog.json``, then print their checksums."""
    rng = np.random.default_rng(0)
    for child in ROOT.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
    s2 = _load(S2_DIR / "item.json")
    s1 = _load(S1_DIR / "item.json")
    cases: list[str] = []

    def s2_case(case: str, item_id: str | None = None) -> dict[str, Any]:
        item = _relink(s2, S2_DIR, ROOT / case)
        item["id"] = item_id if item_id is not None else f"{S2_ID}-{case}"
        cases.append(case)
        return item

    _write_item("good-s2", s2_case("good-s2"))
    good_s1 = _relink(s1, S1_DIR, ROOT / "good-s1")
    good_s1["id"] = f"{S1_ID}-good-s1"
    cases.append("good-s1")
    _write_item("good-s1", good_s1)

    # Truncated COG: the header survives, the tiles do not.
    item = s2_case("truncated")
    (ROOT / "truncated").mkdir(exist_ok=True)
    blob = (S2_DIR / "B04.tif").read_bytes()
    (ROOT / "truncated" / "B04.tif").write_bytes(blob[: int(len(blob) * 0.4)])
    item["assets"]["B04"]["href"] = "./B04.tif"
    _write_item("truncated", item)

    item = s2_case("missing-asset")
    del item["assets"]["B04"]
    _write_item("missing-asset", item)

    item = s2_case("unreachable")
    item["assets"]["B04"]["href"] = "http://127.0.0.1:1/x.tif"  # port 1 (tcpmux): nothing listens on loopback
    _write_item("unreachable", item)

    # Inconsistent extent: B04 shifted 100 km east, declared so in proj:transform.
    item = s2_case("inconsistent")
    (ROOT / "inconsistent").mkdir(exist_ok=True)
    with rasterio.open(S2_DIR / "B04.tif") as src:
        profile = src.profile.copy()
        pixels = src.read(1)
        t = src.transform
        shifted = Affine(t.a, t.b, t.c + 100_000.0, t.d, t.e, t.f)
    profile.update(driver="COG", transform=shifted, blocksize=64, compress="DEFLATE", overviews="NONE")
    for key in ("blockxsize", "blockysize", "tiled", "interleave"):
        profile.pop(key, None)
    with rasterio.open(ROOT / "inconsistent" / "B04.tif", "w", **profile) as dst:
        dst.write(pixels, 1)
    item["assets"]["B04"]["href"] = "./B04.tif"
    item["assets"]["B04"]["proj:transform"] = list(shifted)[:6]
    item["assets"]["B04"].pop("proj:bbox", None)
    _write_item("inconsistent", item)

    _write_item("traversal", s2_case("traversal", item_id="../../escape"))
    _write_item("slash", s2_case("slash", item_id="tiles/T18SUJ/item"))

    linear = rng.gamma(2.0, 0.05, size=(S1_SIZE, S1_SIZE)).astype(np.float32)
    _s1_variant("no-crs", linear, crs=None, keep_proj=False)
    cases.append("no-crs")
    s1_wrong = _relink(s1, S1_DIR, ROOT / "wrong-crs")
    s1_wrong["id"] = f"{S1_ID}-wrong-crs"
    s1_wrong["properties"]["proj:epsg"] = 4326
    _write_item("wrong-crs", s1_wrong)
    cases.append("wrong-crs")
    _s1_variant("all-nodata", np.full((S1_SIZE, S1_SIZE), -32768.0, np.float32), crs="EPSG:32633", keep_proj=True)
    cases.append("all-nodata")
    _s1_variant("nan", np.full((S1_SIZE, S1_SIZE), np.nan, np.float32), crs="EPSG:32633", keep_proj=True)
    cases.append("nan")

    (ROOT / "invalid-json").mkdir(exist_ok=True)
    (ROOT / "invalid-json" / "item.json").write_text('{"type": "Feature", "id": "broken", "properties": {\n')
    cases.append("invalid-json")

    catalog = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "bad-inputs",
        "description": "One broken item per ingest failure mode, plus two good items (tests/data/bad/data.py).",
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
        + [{"rel": "item", "href": f"./{case}/item.json", "type": "application/geo+json"} for case in sorted(cases)],
    }
    (ROOT / "catalog.json").write_text(json.dumps(catalog, indent=2) + "\n")
    for path in sorted(p for p in ROOT.rglob("*") if p.is_file() and p.name != "data.py"):
        print(hashlib.sha256(path.read_bytes()).hexdigest(), path.relative_to(ROOT).as_posix())


if __name__ == "__main__":
    main()
