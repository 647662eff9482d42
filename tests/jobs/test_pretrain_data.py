"""jobs/_pretrain_data.py: optical-SAR pairing, stems and streams of real ingest outputs, the stream pick."""

from __future__ import annotations

import collections
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from jobs._pretrain_data import (
    PairJoiner,
    build_datasets,
    drop_small_streams,
    pair_chips,
    pick_stream,
    plan_feed,
    plan_from_dict,
    plan_to_dict,
    stem_name,
)


def _rows(*chips: tuple[str, str, datetime, tuple[float, float, float, float], int]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"chip_id": cid, "grid_cell": cell, "datetime": t,
             "bbox": {"xmin": b[0], "ymin": b[1], "xmax": b[2], "ymax": b[3]}, "window": [0, 0, size, size]}
            for cid, cell, t, b, size in chips
        ]
    )


T0 = datetime(2017, 6, 13, 10, tzinfo=UTC)
BOX = (10.0, 50.0, 10.01, 50.01)


def test_pairs_by_grid_cell_within_the_window() -> None:
    optical = _rows(("o1", "c1", T0, BOX, 120), ("o2", "c2", T0, (11, 50, 11.01, 50.01), 120))
    sar = _rows(("s1", "c1", T0 + timedelta(hours=7), BOX, 120),
                ("s2", "c2", T0 + timedelta(days=5), (11, 50, 11.01, 50.01), 120))
    assert pair_chips(optical, sar, window=timedelta(days=3)) == [("o1", "s1")]
    assert pair_chips(optical, sar, window=timedelta(days=6)) == [("o1", "s1"), ("o2", "s2")]


def test_pairs_by_footprint_on_other_grids_and_one_to_one_closest_in_time() -> None:
    shifted = (10.0001, 50.0001, 10.0101, 50.0101)  # IoU about 0.98, another grid origin
    optical = _rows(("o1", "gridA", T0, BOX, 120))
    sar = _rows(("far", "gridB", T0 + timedelta(hours=30), shifted, 120),
                ("near", "gridB2", T0 + timedelta(hours=2), shifted, 120),
                ("small", "gridC", T0, shifted, 60),  # another chip size: never a pair
                ("away", "gridD", T0, (12, 50, 12.01, 50.01), 120))
    assert pair_chips(optical, sar, window=timedelta(days=3)) == [("o1", "near")]
    assert pair_chips(optical, sar, window=timedelta(days=3), min_iou=0.99) == []


def test_stem_names_are_identifiers() -> None:
    assert stem_name("bigearthnet-s2") == "bigearthnet_s2"
    assert stem_name("Sentinel-2 L1C") == "sentinel_2_l1c"


def test_stream_pick_is_deterministic_and_follows_the_weights() -> None:
    names, weights = ["a", "b"], [0.8, 0.2]
    picks = [pick_stream(names, weights, 0, step, 0) for step in range(2000)]
    assert picks == [pick_stream(names, weights, 0, step, 0) for step in range(2000)]
    share = collections.Counter(picks)["a"] / len(picks)
    assert 0.76 < share < 0.84
    assert picks != [pick_stream(names, weights, 1, step, 0) for step in range(2000)]


# ------------------------------------------------------------------------------------------- on the real samples


@pytest.fixture(scope="module")
def sample_ingest(ray_local: Any, sample_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jobs.ingest import EXIT_OK, main

    out = tmp_path_factory.mktemp("pretrain-data") / "samples"
    args = ["--catalog", str(sample_catalog), "--output", str(out), "--chip-size", "120", "--no-progress"]
    assert main(args) == EXIT_OK
    return out


@pytest.mark.realdata
def test_plan_of_the_sample_data(sample_ingest: Path) -> None:
    plan = plan_feed([str(sample_ingest)])
    assert plan.in_chans == {"bigearthnet_s1": 2, "bigearthnet_s2": 12, "sentinel_2_l1c": 13}
    pairs = plan.streams["bigearthnet_s2+bigearthnet_s1"]
    assert pairs.rows == 6 and len(pairs.pairs) == 6  # every BigEarthNet S2 patch has its S1 partner
    # The partners share the grid cell: the chip ids end in the same cell key.
    assert all(a.rsplit(":", 1)[1] == b.rsplit(":", 1)[1] for a, b in pairs.pairs)
    assert set(plan.streams) == {"bigearthnet_s2+bigearthnet_s1", "sentinel_2_l1c"}  # no unpaired BigEarthNet chip
    assert sum(plan.weights.values()) == pytest.approx(1.0)
    assert plan_from_dict(plan_to_dict(plan, with_pairs=True)) == plan
    unpaired = plan_feed([str(sample_ingest)], pairing=False)
    assert {n: s.rows for n, s in unpaired.streams.items()} == {"bigearthnet_s1": 6, "bigearthnet_s2": 6,
                                                                  "sentinel_2_l1c": 256}
    small = drop_small_streams(plan, world_size=2, batch_size=4)
    assert set(small.streams) == {"sentinel_2_l1c"} and "bigearthnet_s2+bigearthnet_s1" in small.excluded
    with pytest.raises(ValueError, match="--collections"):
        plan_feed([str(sample_ingest)], collections=["nope"])


@pytest.mark.realdata
def test_pair_joiner_adds_the_normalised_partner(sample_ingest: Path) -> None:
    from pipeline.dataset import load_chips, read_dataset_json
    from pipeline.manifest import chip_key

    plan = plan_feed([str(sample_ingest)])
    stream = plan.streams["bigearthnet_s2+bigearthnet_s1"]
    sar = plan.stems["bigearthnet_s1"]
    joiner = PairJoiner(stream.pairs, str(sample_ingest), "bigearthnet-s1", sar.mean, sar.std)
    keys = np.asarray([chip_key(a) for a, _ in stream.pairs] + [123], dtype=np.int64)  # 123: no partner, dropped
    batch = {"chip_key": keys, "image": np.zeros((len(keys), 12, 120, 120), np.float32)}
    out = joiner(batch)
    assert out["partner"].shape == (6, 2, 120, 120) and out["partner_valid"].shape == (6, 120, 120)
    stats = read_dataset_json(str(sample_ingest))["collections"]["bigearthnet-s1"]["stats"]
    first = next(load_chips(str(sample_ingest), [stream.pairs[0][1]]))
    expected = (first["image"] - np.asarray(stats["mean"])[:, None, None]) / np.asarray(stats["std"])[:, None, None]
    np.testing.assert_allclose(out["partner"][0], expected * first["valid"], rtol=1e-5, atol=1e-5)


@pytest.mark.realdata
def test_build_datasets_with_a_cache_serve_the_same_chips_every_epoch(sample_ingest: Path) -> None:
    plan = plan_feed([str(sample_ingest)])
    streamed = build_datasets(plan, shuffle=False)
    cached = build_datasets(plan, shuffle=True, cache_bytes=2**30)  # the sample streams fit: decoded once

    def keys(ds: Any) -> list[int]:
        return sorted(int(k) for b in ds.iter_batches(batch_size=8, batch_format="numpy") for k in b["chip_key"])

    for name in plan.streams:
        want = keys(streamed[name])
        assert want and all(keys(cached[name]) == want for _ in range(2))


def test_stream_feed_counts_epochs_and_resumes_its_position(ray_local: Any) -> None:
    import ray.data

    from jobs._pretrain_data import StreamFeed

    ds = ray.data.from_items([{"x": np.float32(i)} for i in range(10)], override_num_blocks=2)
    ds.context.execution_options.preserve_order = True  # the skip is checked against a fixed order; Ray's default
    # lets the two blocks arrive in either order under load
    feed = StreamFeed({"a": ds.iterator()}, batch_size=4, seed=0, shuffle_buffer=0, prefetch_batches=2)
    seen = [feed.next("a")["x"].tolist() for _ in range(3)]  # two full batches per epoch (drop_last), then epoch 1
    assert feed.position["a"] == [1, 1]
    assert sorted(v for b in seen[:2] for v in b) == [0, 1, 2, 3, 4, 5, 6, 7]
    feed.close()
    resumed = StreamFeed({"a": ds.iterator()}, batch_size=4, seed=0, shuffle_buffer=0, prefetch_batches=2,
                         position={"a": [1, 1]})
    assert resumed.next("a")["x"].tolist() == [4.0, 5.0, 6.0, 7.0]  # epoch 1, batch 2 (unshuffled order)
    assert resumed.position["a"] == [1, 2]
    assert resumed.next("a") is not None and resumed.position["a"] == [2, 1]
    resumed.close()
    empty = StreamFeed({"a": ds.iterator()}, batch_size=64, seed=0, shuffle_buffer=0, prefetch_batches=1)
    with pytest.raises(RuntimeError, match="lower --batch-size"):
        empty.next("a")


def _epoch_by_key(feed: Any, name: str, rows: int, batch_size: int) -> dict[int, dict[str, np.ndarray]]:
    """One epoch's batches of a stream from a :class:`StreamFeed`, by chip key (each column as numpy)."""
    chips: dict[int, dict[str, np.ndarray]] = {}
    for _ in range(rows // batch_size):
        batch = feed.next(name)
        for i, key in enumerate(batch["chip_key"].tolist()):
            chips[int(key)] = {k: v[i].numpy() for k, v in batch.items() if k != "chip_key"}
    return chips


@pytest.mark.realdata
def test_native_streams_normalised_in_the_consumer_match_the_read_task_bits(sample_ingest: Path) -> None:
    import torch

    from jobs._pretrain_data import StreamFeed, stream_collates
    from pipeline.torch_feed import torch_normalize

    plan = plan_feed([str(sample_ingest)])
    read_side = build_datasets(plan, shuffle=False, normalize="worker")
    native = build_datasets(plan, shuffle=False)  # the default: uint16/float32 native pixels through Ray
    collates = stream_collates(plan, "cpu")
    assert set(collates) == set(plan.streams) and stream_collates(plan, "cpu", "read") == {}
    batch_size = 2
    for name, stream in plan.streams.items():
        sources = ((read_side[name], None), (native[name], collates))
        feeds = [StreamFeed({name: ds.iterator()}, batch_size=batch_size, seed=0, shuffle_buffer=0,
                            prefetch_batches=2, collates=c) for ds, c in sources]
        want, got = (_epoch_by_key(f, name, stream.rows, batch_size) for f in feeds)
        for feed in feeds:
            feed.close()
        common = set(want) & set(got)
        assert len(common) >= stream.rows - 2 * batch_size  # drop_last may leave out a different tail
        for key in common:
            assert got[key]["image"].dtype == np.float32
            assert got[key].keys() == want[key].keys()  # mask, partner of a pair stream: joined as before
            for column, value in want[key].items():
                assert np.array_equal(got[key][column].view(np.uint8), value.view(np.uint8)), (name, column)
        # The GPU path of the collate (ChipCollate(device="cuda")) is pipeline.torch_normalize after the copy: the
        # same function on CPU tensors gives the same bits.
        raw = next(iter(native[name].iter_torch_batches(batch_size=4)))
        assert raw["image"].dtype == (torch.float32 if stream.stems[0] == "bigearthnet_s1" else torch.uint16)
        on_device = torch_normalize({"image": raw["image"], "valid": raw["valid"]}, collates[name].mean,
                                    collates[name].std)
        for i, key in enumerate(raw["chip_key"].tolist()):
            if int(key) in want:
                assert np.array_equal(on_device[i].numpy().view(np.uint8), want[int(key)]["image"].view(np.uint8))


@pytest.mark.realdata
def test_cache_default_caches_the_streams_that_fit(sample_ingest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jobs.pretrain as pretrain
    from jobs._pretrain_data import stream_nbytes

    plan = plan_feed([str(sample_ingest)])
    cfg = pretrain.PretrainConfig(data=(str(sample_ingest),))
    sizes = stream_nbytes(plan)
    s2 = plan.streams["sentinel_2_l1c"]
    assert sizes["sentinel_2_l1c"] == 256 * (13 * 120 * 120 * 2 + 120 * 120 + 8) and s2.rows == 256  # uint16
    assert pretrain.cache_budget(cfg, plan) == sizes  # a few MB: cached whole
    assert pretrain.cache_budget(replace(cfg, cache_gib=0.0), plan) is None
    assert pretrain.cache_budget(replace(cfg, cache_gib=0.5), plan) == 2**29
    import jobs._ray

    monkeypatch.setattr(jobs._ray, "OBJECT_STORE_SHARE", 0.0)  # an object store too small for the streams
    assert pretrain.cache_budget(cfg, plan) is None
