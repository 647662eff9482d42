"""jobs/embed.py end to end: synthetic COGs → ingest → embeddings.parquet, compared with a direct model call."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import geopandas
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import pipeline
import rsvheat
from jobs.embed import EXIT_OK, EXIT_USAGE, main
from jobs.ingest import main as ingest_main

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"
COLLECTION = "sentinel-2-l2a"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> Path:
    out = tmp_path_factory.mktemp("embed-data")
    code = ingest_main(
        ["--catalog", str(SYNTHETIC / "items-fc.json"), "--output", str(out), "--chip-size", "64", "--no-progress"]
    )
    assert code == 0
    return out


def _bands(data: Path, collection: str = COLLECTION) -> list[str]:
    return list(json.loads((data / "dataset.json").read_text())["collections"][collection]["bands"])


def _checkpoint(path: Path, bands: list[str], stats: dict[str, Any] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = rsvheat.create_model("vheat_test", in_chans={"optical": len(bands)})
    rsvheat.save_checkpoint(path, model, bands={"optical": bands}, stats=stats)
    return model.eval()


def test_embeddings_equal_a_direct_model_call(ingested: Path, tmp_path: Path) -> None:
    bands = _bands(ingested)
    mean = [100.0 + i for i in range(len(bands))]
    std = [50.0 + i for i in range(len(bands))]
    stats = {"stats_hash": "test-stats", "optical": {"mean": mean, "std": std}}
    model = _checkpoint(tmp_path / "enc.pt", bands, stats)
    out = tmp_path / "emb"
    args = ["--model", str(tmp_path / "enc.pt"), "--data", str(ingested), "--collection", COLLECTION]
    assert main([*args, "--output", str(out), "--batch-size", "3"]) == EXIT_OK

    table = pq.read_table(out / "embeddings.parquet")
    chips = list(pipeline.load_chips(str(ingested), collection=COLLECTION))
    assert sorted(table["chip_id"].to_pylist()) == sorted(c["chip_id"] for c in chips)
    assert table.schema.field("embedding").type.list_size == model.feature_info[-1]["num_chs"]
    digest = hashlib.sha256((tmp_path / "enc.pt").read_bytes()).hexdigest()
    assert set(table["checkpoint_sha256"].to_pylist()) == {digest}
    assert set(table["model"].to_pylist()) == {"vheat_test"}

    # The same chips through the model directly, normalised with the checkpoint's stats (not the dataset's).
    by_id = {c["chip_id"]: c for c in chips}
    got = dict(zip(table["chip_id"].to_pylist(), np.asarray(table["embedding"].to_pylist(), np.float32), strict=True))
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    x = np.stack([(by_id[c]["image"].astype(np.float32) - m) / s * by_id[c]["valid"] for c in got])
    with torch.inference_mode():
        direct = model.forward_features(torch.from_numpy(x), modality="optical")[-1].mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(np.stack(list(got.values())), direct, rtol=1e-4, atol=1e-5)

    # Readable as GeoParquet by geopandas and by duckdb, with the chips' footprints from the index.
    frame = geopandas.read_parquet(out / "embeddings.parquet")
    assert frame.crs is not None and frame.crs.equals("OGC:CRS84")
    index = geopandas.read_parquet(ingested / "index.parquet").set_index("chip_id")
    for chip_id, geom in zip(frame["chip_id"], frame.geometry, strict=True):
        assert geom.equals(index.loc[chip_id, "geometry"])
    rows = duckdb.sql(f"select count(*), min(len(embedding)) from '{out / 'embeddings.parquet'}'").fetchall()[0]
    assert rows == (len(chips), model.feature_info[-1]["num_chs"])


def test_checkpoint_that_does_not_fit_the_data_exits_2(
    ingested: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bands = _bands(ingested)
    _checkpoint(tmp_path / "wrong.pt", list(reversed(bands)))  # same count, other order: must not be accepted
    args = ["--model", str(tmp_path / "wrong.pt"), "--data", str(ingested), "--output", str(tmp_path / "o")]
    assert main([*args, "--collection", COLLECTION]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no stem" in err and bands[0] in err

    assert main([*args]) == EXIT_USAGE  # several collections, none chosen
    assert "--collection" in capsys.readouterr().err

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    junk = ["--model", str(tmp_path / "junk.pt"), "--data", str(ingested), "--output", str(tmp_path / "o")]
    assert main([*junk, "--collection", COLLECTION]) == EXIT_USAGE
    assert "cannot be read as an rsvheat checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o" / "embeddings.parquet").exists()
