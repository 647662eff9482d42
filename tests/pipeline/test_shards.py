"""Tests for pipeline.shards: schema, streaming atomic writes, row-group sizing, metadata and decoding."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.records import Chip, ResolvedItem
from pipeline.shards import (
    METADATA_KEY,
    chip_checksum,
    content_checksum,
    decode_images,
    decode_valid,
    read_shard,
    row_group_size_for,
    shard_metadata,
    write_shard,
)
from pipeline.tiling import cut_item
from tests.data.synthetic.data import S1_RTC, S2_ALIGNED, resolved_item

VERSIONS = {"dataset_version": "v-test", "processing_version": "p1", "sensor_metadata": {"name": "sentinel-2-l2a"}}


@pytest.fixture(scope="module")
def s2() -> tuple[ResolvedItem, list[Chip]]:
    """Chips of the aligned S2 fixture, and its item with a signed (query-string) href for the lineage check."""
    item = resolved_item(S2_ALIGNED, ("B02", "B03", "B04", "B08", "B05", "B11"))
    chips = list(cut_item(item, chip_size=32))
    signed = dataclasses.replace(item.bands[0], href=item.bands[0].href + "?sig=SECRET")
    return dataclasses.replace(item, bands=(signed, *item.bands[1:])), chips


def test_round_trip(tmp_path: Path, s2: tuple[ResolvedItem, list[Chip]]) -> None:
    item, chips = s2
    info = write_shard(str(tmp_path / "a" / "shard.parquet"), chips, item, **VERSIONS)  # type: ignore[arg-type]
    assert info.n_rows == len(chips) == 16
    assert info.n_bytes == (tmp_path / "a" / "shard.parquet").stat().st_size
    assert info.checksum == hashlib.blake2b("\n".join(info.chip_checksums).encode(), digest_size=16).hexdigest()
    table = read_shard(info.path)
    images = decode_images(table)
    assert images.shape == (16, 6, 32, 32) and images.dtype == np.uint16
    np.testing.assert_array_equal(images, np.stack([c.image for c in chips]))
    np.testing.assert_array_equal(decode_valid(table), np.stack([c.valid for c in chips]))
    assert info.chip_ids == tuple(c.chip_id for c in chips)
    assert info.chip_checksums == tuple(chip_checksum(c.image) for c in chips)
    rows = table.drop_columns(["image", "valid"]).to_pylist()
    assert [r["chip_id"] for r in rows] == [c.chip_id for c in chips]
    assert rows[3]["transform"] == list(chips[3].transform) and rows[3]["window"] == list(chips[3].window)
    assert rows[0]["datetime"] == item.datetime and rows[0]["crs_epsg"] == 32618
    assert rows[0]["checksum"] == chip_checksum(chips[0].image)
    assert rows[0]["cloud_pct"] == pytest.approx(chips[0].cloud_pct, abs=1e-4)
    schema = table.schema
    assert schema.field("image").type == pa.binary() and schema.field("valid").type == pa.binary()
    assert rows[0]["dtype"] == "uint16" and rows[0]["shape"] == [6, 32, 32]
    assert pc.binary_length(table.column("image")).to_pylist() == [6 * 32 * 32 * 2] * 16
    assert pc.binary_length(table.column("valid")).to_pylist() == [32 * 32 // 8] * 16  # packed bits
    assert schema.field("datetime").type == pa.timestamp("us", tz="UTC")
    assert schema.field("crs_epsg").type == pa.int32()
    assert schema.field("transform").type == pa.list_(pa.float64(), 6)
    assert schema.field("window").type == pa.list_(pa.int32(), 4)
    assert schema.field("cloud_pct").type == pa.float32() and schema.field("cloud_pct").nullable
    assert pq.ParquetFile(info.path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_checksums_detect_changed_pixels(tmp_path: Path, s2: tuple[ResolvedItem, list[Chip]]) -> None:
    item, chips = s2
    image = chips[5].image
    assert chip_checksum(image) == f"{zlib.crc32(image.astype('<u2').tobytes()):08x}"
    assert chip_checksum(image.astype(">u2")) == chip_checksum(image)  # checksums the bytes as stored (little-endian)
    changed = image.copy()
    changed[2, 7, 9] += 1
    assert chip_checksum(changed) != chip_checksum(image)
    path = tmp_path / "c.parquet"
    write_shard(str(path), chips, item, compression="none", **VERSIONS)  # type: ignore[arg-type]
    body = bytearray(path.read_bytes())
    at = bytes(body).index(image.astype("<u2").tobytes())  # uncompressed: the chip's bytes are in the file as is
    body[at + 1000] ^= 0x01  # one flipped bit in one pixel of chip 5
    path.write_bytes(bytes(body))
    table = read_shard(str(path))
    bad = [k for k, image in enumerate(decode_images(table)) if chip_checksum(image) != table["checksum"][k].as_py()]
    assert bad == [5]


def test_metadata(tmp_path: Path, s2: tuple[ResolvedItem, list[Chip]]) -> None:
    item, chips = s2
    info = write_shard(str(tmp_path / "s.parquet"), chips, item, **VERSIONS)  # type: ignore[arg-type]
    meta = shard_metadata(info.path)
    assert meta == json.loads(pq.read_schema(info.path).metadata[METADATA_KEY.encode()])
    assert meta["dataset_version"] == "v-test" and meta["processing_version"] == "p1"
    assert meta["collection"] == "sentinel-2-l2a" and meta["modality"] == "optical" and meta["chip_px"] == 32
    assert meta["band_order"] == ["B02", "B03", "B04", "B08", "B05", "B11"]
    b05 = meta["bands"][4]
    assert b05["gsd_m"] == 20.0 and b05["center_wavelength_um"] == 0.704 and b05["resampling"] == "bilinear"
    assert b05["nodata"] == 0 and b05["scale"] == 0.0001 and b05["common_name"] == "rededge"
    assert meta["pixel_encoding"]["dtype"] == "uint16" and meta["pixel_encoding"]["shape"] == [6, 32, 32]
    assert meta["pixel_encoding"]["type"] == "raw" and meta["pixel_encoding"]["byte_order"] == "little"
    assert meta["sensor_metadata"] == {"name": "sentinel-2-l2a"}
    assert meta["lineage"]["item_id"] == item.item_id
    assert meta["lineage"]["assets"]["B02"].endswith("B02.tif")
    assert meta["lineage"]["properties"] == item.properties  # baseline, DN offset and its reason travel along
    assert meta["quality"]["kind"] == "scl" and meta["quality"]["resampling"] == "nearest"
    assert "SECRET" not in json.dumps(meta)


def test_metadata_records_the_quality_rule_and_harmonisation(tmp_path: Path) -> None:
    from pipeline.items import resolve_item

    raw = json.loads(S2_ALIGNED.read_text())
    for asset in raw["assets"].values():
        asset["href"] = str(S2_ALIGNED.parent / asset["href"].removeprefix("./"))
    item = resolve_item(raw)
    chips = list(cut_item(item, chip_size=64))
    info = write_shard(str(tmp_path / "s.parquet"), chips, item, **VERSIONS)  # type: ignore[arg-type]
    meta = shard_metadata(info.path)
    assert sorted(meta["quality"]["cloud"]) == [1, 3, 8, 9, 10] and meta["quality"]["nodata"] == [0]
    props = meta["lineage"]["properties"]
    assert props["s2:processing_baseline"] == "05.10" and props["rs:dn_offset"] == -1000
    assert "05.10" in props["rs:dn_offset_reason"] and {b["dn_offset"] for b in meta["bands"]} == {-1000}


def test_sar_shard_has_float32_and_null_cloud(tmp_path: Path) -> None:
    item = resolved_item(S1_RTC)
    chips = list(cut_item(item, chip_size=32))
    info = write_shard(str(tmp_path / "s1.parquet"), chips, item, **VERSIONS)  # type: ignore[arg-type]
    table = read_shard(info.path, columns=["chip_id", "cloud_pct", "image", "dtype", "shape"])
    assert table.column_names == ["chip_id", "cloud_pct", "image", "dtype", "shape"]
    assert table.column("cloud_pct").null_count == len(chips)
    images = decode_images(table)
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, np.stack([c.image for c in chips]))
    assert shard_metadata(info.path)["bands"][0]["units"] == "dB"


def test_row_group_sizing(tmp_path: Path, s2: tuple[ResolvedItem, list[Chip]]) -> None:
    assert row_group_size_for(12 * 256 * 256 * 2) == 170  # S2 12-band uint16 chip (1.5 MiB)
    assert row_group_size_for(2 * 256 * 256 * 4) == 256  # S1 VV+VH float32 (0.5 MiB): capped at 256
    assert row_group_size_for(64 * 1024 * 1024) == 4  # huge chips still stay under 256 MiB per group
    item, chips = s2
    info = write_shard(str(tmp_path / "rg.parquet"), chips, item, row_group_size=6, **VERSIONS)  # type: ignore[arg-type]
    meta = pq.ParquetFile(info.path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [6, 6, 4]
    info = write_shard(str(tmp_path / "rg2.parquet"), chips, item, **VERSIONS)  # type: ignore[arg-type]
    assert info.row_group_size == 256 and pq.ParquetFile(info.path).metadata.num_row_groups == 1


def test_multi_row_group_decode_copies_once(tmp_path: Path, s2: tuple[ResolvedItem, list[Chip]]) -> None:
    item, chips = s2
    info = write_shard(str(tmp_path / "m.parquet"), chips, item, row_group_size=5, **VERSIONS)  # type: ignore[arg-type]
    table = read_shard(info.path)
    assert table.column("image").num_chunks > 1
    np.testing.assert_array_equal(decode_images(table), np.stack([c.image for c in chips]))
    single = table.combine_chunks()
    images = decode_images(single)
    buffer = single.column("image").chunk(0).buffers()[2]
    assert images.ctypes.data == buffer.address  # zero-copy view of the Arrow buffer
    assert not images.flags.owndata


def test_decode_needs_dtype_and_shape_and_odd_masks(tmp_path: Path, s2: tuple[ResolvedItem, list[Chip]]) -> None:
    item, chips = s2
    odd = [dataclasses.replace(c, image=c.image[:, :5, :3], valid=c.valid[:5, :3]) for c in chips[:3]]  # 15 bits
    odd[1].valid[2, 1] = False
    info = write_shard(str(tmp_path / "o.parquet"), odd, item, **VERSIONS)  # type: ignore[arg-type]
    table = read_shard(info.path)
    np.testing.assert_array_equal(decode_valid(table), np.stack([c.valid for c in odd]))
    np.testing.assert_array_equal(decode_images(table), np.stack([c.image for c in odd]))
    with pytest.raises(KeyError, match="'shape'"):
        decode_images(table.drop_columns(["shape"]))


def test_atomic_write_leaves_no_temp_file(tmp_path: Path, s2: tuple[ResolvedItem, list[Chip]]) -> None:
    item, chips = s2
    info = write_shard(f"file://{tmp_path}/ok.parquet", chips, item, **VERSIONS)  # type: ignore[arg-type]
    assert info.path == str(tmp_path / "ok.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.parquet"]

    def failing() -> Iterator[Chip]:
        yield from chips[:3]
        raise RuntimeError("reader died mid-item")

    with pytest.raises(RuntimeError, match="mid-item"):
        write_shard(str(tmp_path / "bad.parquet"), failing(), item, row_group_size=2, **VERSIONS)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.parquet"]


def test_rejects_empty_and_mixed_shapes(tmp_path: Path, s2: tuple[ResolvedItem, list[Chip]]) -> None:
    item, chips = s2
    with pytest.raises(ValueError, match="no chips"):
        write_shard(str(tmp_path / "e.parquet"), [], item, **VERSIONS)  # type: ignore[arg-type]
    odd = dataclasses.replace(chips[1], image=chips[1].image[:3])
    with pytest.raises(ValueError, match="one shard takes one item"):
        write_shard(str(tmp_path / "x.parquet"), [chips[0], odd], item, **VERSIONS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compression must be 'zstd', 'lz4' or 'none', got 'gzip'"):
        write_shard(str(tmp_path / "g.parquet"), chips, item, compression="gzip", **VERSIONS)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_write_and_read_through_s3(moto_s3, s2: tuple[ResolvedItem, list[Chip]]) -> None:  # type: ignore[no-untyped-def]
    item, chips = s2
    fs = moto_s3.pyarrow_fs()
    uri = f"s3://{moto_s3.bucket}/shards/v-test/sentinel-2-l2a/utm=32618/{item.safe_id}.parquet"
    info = write_shard(uri, chips, item, filesystem=fs, **VERSIONS)  # type: ignore[arg-type]
    assert info.path == f"{moto_s3.bucket}/shards/v-test/sentinel-2-l2a/utm=32618/{item.safe_id}.parquet"
    body = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key=info.path.split("/", 1)[1])["Body"].read()
    assert len(body) == info.n_bytes
    assert info.checksum == content_checksum(info.chip_checksums)
    table = pq.read_table(pa.BufferReader(body))
    assert [chip_checksum(image) for image in decode_images(table)] == table.column("checksum").to_pylist()
    np.testing.assert_array_equal(decode_images(read_shard(uri, filesystem=fs)), np.stack([c.image for c in chips]))
    assert shard_metadata(uri, filesystem=fs)["collection"] == "sentinel-2-l2a"


def test_per_band_validity_is_stored_only_where_bands_differ(tmp_path: Path) -> None:
    from pipeline.shards import PIXEL_ENCODING, decode_band_valid

    item = resolved_item(S2_ALIGNED, ("B02", "B05", "B01"))  # the 60 m B01 overhangs by 40 m; the wedge blends
    chips = list(cut_item(item, chip_size=32))
    differing = [c for c in chips if c.band_valid is not None]
    assert differing and len(differing) < len(chips)
    info = write_shard(str(tmp_path / "s.parquet"), chips, item, **VERSIONS)
    table = read_shard(str(tmp_path / "s.parquet"))
    assert table.column("band_valid").null_count == len(chips) - len(differing)
    band_valid = decode_band_valid(table)  # (N, C, H, W)
    for k, chip in enumerate(chips):
        expected = np.broadcast_to(chip.valid, (3, 32, 32)) if chip.band_valid is None else chip.band_valid
        np.testing.assert_array_equal(band_valid[k], expected)
        np.testing.assert_array_equal(band_valid[k].all(axis=0), decode_valid(table)[k])
    assert info.n_rows == len(chips)
    meta = shard_metadata(str(tmp_path / "s.parquet"))
    assert meta["shard_schema_version"] == "3" and meta["pixel_encoding"]["band_valid_column"] == "band_valid"
    assert "null where every band's mask equals `valid`" in PIXEL_ENCODING["band_valid_encoding"]
    # A shard without the column (schema 2) decodes to the all-bands mask for every band.
    old = table.drop_columns(["band_valid"])
    np.testing.assert_array_equal(decode_band_valid(old), np.repeat(decode_valid(old)[:, None], 3, axis=1))
