"""Batch embedding: every written chip of an ingest output through an rsvheat encoder, into GeoParquet.

Run locally or on a cluster::

    python jobs/embed.py --model out/pretrain/encoder.pt --data out/demo --collection bigearthnet-s2-l2a \
        --output out/embed
    ray job submit --working-dir . -- python jobs/embed.py --model s3://models/encoder.pt --data s3://datasets/s2 \
        --output s3://embeddings/s2

Steps (docs/operations.md §Embedding):

1. **Plan** on the driver: read the checkpoint's metadata (registry name, bands per stem, normalisation stats), pick
   the stem whose band order equals the collection's (or ``--modality``), and hash the checkpoint file.
2. **Embed** with ``map_batches(ChipEmbedder, compute=ActorPoolStrategy(...))``: each actor loads the model once
   (GPU when the cluster has one), decodes a batch of shard rows, normalises it with the checkpoint's stats, and
   returns the global average of the last feature stage per chip.
3. **Write** ``OUTPUT/embeddings.parquet`` (GeoParquet 1.1, atomic): ``chip_id``, ``item_id``, ``collection``,
   ``datetime``, ``geometry`` (WKB, OGC:CRS84), ``bbox``, ``model``, ``checkpoint_sha256`` and ``embedding`` as a
   fixed-size float32 list, joined from the chip index.

With ``--incremental --state DIR`` only the chips that changed since each tile's reference are embedded; the others
reuse their cached vectors, and every row says which (docs/operations.md §Incremental runs, jobs/_embed_incremental.py).

Exit status: 0 on success, 2 for bad flags or a checkpoint that does not fit the data (the message says why).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/embed.py` (also under `ray job submit --working-dir .`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs._config import ConfigError, parse_config, to_dict
from jobs._model_io import CheckpointBlob, load_model, read_checkpoint, stem_stats
from jobs._ray import init_ray
from pipeline.dataset import Normalizer, read_dataset_json
from pipeline.manifest import OutputStore, _geo_metadata

__all__ = ["ChipEmbedder", "EmbedConfig", "EmbedPlan", "embedding_schema", "main", "plan_embedding", "run_embed"]

log = logging.getLogger("jobs.embed")

EXIT_OK, EXIT_USAGE = 0, 2
_ROW_COLUMNS = ["chip_id", "image", "dtype", "shape", "valid"]
_INDEX_COLUMNS = ["chip_id", "item_id", "collection", "datetime", "geometry", "bbox"]


@dataclass(frozen=True)
class EmbedConfig:
    """Configuration of ``jobs/embed.py``; every field is a flag (``--batch-size``) and a YAML key (``batch_size``)."""

    model: str = field(metadata={"help": "rsvheat checkpoint (encoder.pt, best.pt, ...): local path or s3://"})
    data: str = field(metadata={"help": "ingest output (local directory or s3://bucket/prefix)"})
    output: str = field(metadata={"help": "where embeddings.parquet is written (local directory or s3://)"})
    collection: str | None = field(default=None, metadata={"help": "collection to embed; required when several"})
    modality: str | None = field(default=None, metadata={"help": "stem to use (default: the one whose bands match)"})
    batch_size: int = field(default=16, metadata={"help": "chips per forward pass"})
    workers: int = field(default=1, metadata={"help": "embedding actors (each loads the model once)"})
    use_gpu: bool | None = field(
        default=None, metadata={"help": "one GPU per actor (default: when the cluster has one)"}
    )
    s3_endpoint: str | None = field(default=None, metadata={"help": "S3 endpoint URL; default AWS_ENDPOINT_URL"})
    # Incremental (docs/change-aware.md)
    incremental: bool = field(default=False, metadata={"help": "embed only chips that changed (needs --state)"})
    state: str | None = field(default=None, metadata={"help": "incremental state directory (local or shared FS)"})
    incremental_config: str | None = field(
        default=None, metadata={"help": "YAML with an `incremental:` block (docs/change-aware.md); default: defaults"}
    )
    change_score: str | None = field(
        default=None, metadata={"help": "norm_diff | index_delta (default) | sar_logratio; overrides the YAML"}
    )


@dataclass(frozen=True)
class EmbedPlan:
    """What the driver resolved before any chip is read."""

    collection: str
    modality: str
    model_name: str
    checkpoint_sha256: str
    mean: list[float]
    std: list[float]
    stats_source: str
    shards: list[str]


class ChipEmbedder:
    """Ray Data actor: load an rsvheat checkpoint once, then turn shard rows into embeddings.

    Args:
        checkpoint: the checkpoint file's bytes (so workers need no access to the driver's disk or credentials).
        modality: the stem to run.
        mean, std: per-band normalisation (the checkpoint's own stats when it has them).
        use_gpu: run on ``cuda``.
    """

    def __init__(
        self, checkpoint: bytes, modality: str, mean: Sequence[float], std: Sequence[float], use_gpu: bool
    ) -> None:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.device = torch.device("cuda" if use_gpu else "cpu")
        model, _ = load_model(checkpoint)
        self.encoder = getattr(model, "encoder", model).to(self.device).eval()
        self.modality = modality
        self.normalize = Normalizer(mean, std)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """Shard rows → ``{"chip_id": (B,), "embedding": (B, D) float32, "seconds": (B,)}`` (model time per chip)."""
        import torch

        images = self.normalize(batch)["image"]  # (B, C, H, W) float32, nodata → 0
        start = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device)
            last = self.encoder.forward_features(x, modality=self.modality)[-1]  # (B, D, h, w)
            pooled = last.float().mean(dim=(2, 3)).cpu().numpy()  # (B, D)
        n = len(pooled)
        return {
            "chip_id": np.asarray(batch.column("chip_id").to_pylist(), dtype=object),
            "embedding": pooled,
            "seconds": np.full(n, (time.perf_counter() - start) / max(n, 1)),
        }


def _pick_collection(meta: Mapping[str, Any], wanted: str | None, data: str) -> str:
    collections = sorted(meta.get("collections") or {})
    if wanted is None:
        if len(collections) != 1:
            raise ConfigError(f"--data {data} holds collections {collections}; pass --collection NAME")
        return collections[0]
    if wanted not in collections:
        raise ConfigError(f"--collection {wanted!r} is not in --data {data}; it holds {collections}")
    return wanted


def _pick_modality(ckpt: Mapping[str, Any], bands: Sequence[str], wanted: str | None, uri: str) -> str:
    """The stem whose recorded band order equals the dataset's (or ``wanted``, checked the same way)."""
    in_chans: dict[str, int] = dict(ckpt.get("in_chans") or {})
    recorded: dict[str, list[str]] = dict(ckpt.get("bands") or {})
    candidates = [wanted] if wanted is not None else list(in_chans)
    if wanted is not None and wanted not in in_chans:
        raise ConfigError(f"--modality {wanted!r} is not a stem of {uri}; its stems: {sorted(in_chans)}")
    for name in candidates:
        if name in recorded and list(recorded[name]) == list(bands):
            return name
        if name not in recorded and in_chans[name] == len(bands) and (wanted is not None or len(in_chans) == 1):
            log.warning("%s records no band names for stem %r; assuming the data's order %s", uri, name, list(bands))
            return name
    described = {m: recorded.get(m, f"{in_chans[m]} unnamed bands") for m in candidates}
    raise ConfigError(
        f"no stem of {uri} takes the data's bands {list(bands)}; the checkpoint's stems take {described}. Embed a "
        "collection with those bands, or fine-tune/pretrain a model on this band set."
    )


def plan_embedding(cfg: EmbedConfig, checkpoint: CheckpointBlob) -> EmbedPlan:
    """Resolve collection, stem, stats and shards, or raise :class:`ConfigError` naming what does not fit."""
    dataset = read_dataset_json(cfg.data, s3_endpoint=cfg.s3_endpoint)
    collection = _pick_collection(dataset, cfg.collection, cfg.data)
    entry = dataset["collections"][collection]
    if not entry.get("shards"):
        raise ConfigError(f"collection {collection!r} of {cfg.data} has no written chips; nothing to embed")
    ckpt = checkpoint.meta
    modality = _pick_modality(ckpt, entry["bands"], cfg.modality, cfg.model)
    stats = stem_stats(ckpt, modality)
    if stats:
        (mean, std), source = stats, f"checkpoint (hash {ckpt.get('stats_hash')})"
    else:
        mean, std, source = list(entry["stats"]["mean"]), list(entry["stats"]["std"]), "dataset.json"
        log.warning("%s carries no normalisation stats for %r; normalising with the dataset's own", cfg.model, modality)
    return EmbedPlan(
        collection=collection,
        modality=modality,
        model_name=str(ckpt["model"]),
        checkpoint_sha256=checkpoint.sha256,
        mean=mean,
        std=std,
        stats_source=source,
        shards=list(entry["shards"]),
    )


def embedding_schema(dim: int) -> pa.Schema:
    """The columns of ``embeddings.parquet`` for ``dim``-dimensional embeddings."""
    bbox = pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())])
    return pa.schema(
        [
            pa.field("chip_id", pa.string(), nullable=False),
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("collection", pa.string(), nullable=False),
            pa.field("datetime", pa.timestamp("us", tz="UTC")),
            pa.field("geometry", pa.binary(), nullable=False),
            pa.field("bbox", bbox),
            pa.field("model", pa.string(), nullable=False),
            pa.field("checkpoint_sha256", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def _embeddings_table(chip_ids: list[str], vectors: np.ndarray, index: pa.Table, plan: EmbedPlan) -> pa.Table:
    """Join the actors' output with the chip index into the GeoParquet table, sorted by chip id."""
    order = np.argsort(np.asarray(chip_ids, dtype=object), kind="stable")
    ids = pa.array([chip_ids[i] for i in order], pa.string())
    vectors = np.ascontiguousarray(vectors[order], dtype=np.float32)  # (N, D)
    position = {chip_id: row for row, chip_id in enumerate(index["chip_id"].to_pylist())}
    missing = [c for c in ids.to_pylist() if c not in position]
    if missing:
        raise RuntimeError(f"{len(missing)} embedded chips are missing from the index (e.g. {missing[:3]}); re-run")
    joined = index.select(_INDEX_COLUMNS).take(pa.array([position[c] for c in ids.to_pylist()], pa.int64()))
    dim = vectors.shape[1]
    columns = {name: joined[name] for name in _INDEX_COLUMNS}
    columns["model"] = pa.array([plan.model_name] * len(ids), pa.string())
    columns["checkpoint_sha256"] = pa.array([plan.checkpoint_sha256] * len(ids), pa.string())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)  # (N*D,) -> (N, D)
    table = pa.table(columns, schema=embedding_schema(dim))
    return table.replace_schema_metadata({b"geo": json.dumps(_geo_metadata(table)).encode()})


def _use_gpu(cfg: EmbedConfig) -> bool:
    import ray

    return bool(ray.cluster_resources().get("GPU", 0)) if cfg.use_gpu is None else cfg.use_gpu


def _embed(ds: Any, checkpoint: CheckpointBlob, plan: EmbedPlan, cfg: EmbedConfig, use_gpu: bool
           ) -> tuple[list[str], np.ndarray, float]:
    """Run shard rows through the embedding actors; ``(chip ids, (N, D) vectors, model seconds)``."""
    import ray

    ds = ds.map_batches(  # [3] an actor pool: the model is loaded once per actor, on its GPU when there is one
        ChipEmbedder,
        fn_constructor_kwargs={
            "checkpoint": checkpoint.data,
            "modality": plan.modality,
            "mean": plan.mean,
            "std": plan.std,
            "use_gpu": use_gpu,
        },
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=max(1, cfg.workers)),
        num_cpus=1,
        num_gpus=1 if use_gpu else 0,
    )
    chip_ids: list[str] = []
    vectors: list[np.ndarray] = []
    seconds = 0.0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):  # [4] stream the embeddings back
        chip_ids.extend(str(c) for c in batch["chip_id"])
        vectors.append(np.asarray(batch["embedding"], dtype=np.float32))
        seconds += float(np.sum(batch["seconds"]))
    return chip_ids, np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32), seconds


def _written_index(store: OutputStore, columns: Sequence[str]) -> pa.Table:
    with store.filesystem.open_input_file(store.path("index.parquet")) as handle:
        index = pq.read_table(handle, columns=[*columns, "status"])
    return index.filter(pc.equal(index["status"], "written"))


def _run_incremental(
    cfg: EmbedConfig, plan: EmbedPlan, checkpoint: CheckpointBlob, store: OutputStore, use_gpu: bool
) -> tuple[pa.Table, dict[str, Any]]:
    """The incremental path (jobs/_embed_incremental.py): plan, embed what changed, merge, commit the state."""
    import ray

    from jobs import _embed_incremental as inc
    from jobs._incremental import StateDir, load_incremental_config

    inc_cfg = load_incremental_config(cfg.incremental_config, cfg.change_score)
    if inc_cfg.change_score == "embed_delta":
        raise ConfigError("change_score embed_delta is not available in jobs/embed.py yet (it needs a stage-1 "
                          "forward of the reference); use index_delta, norm_diff or sar_logratio")
    state = StateDir.open(str(cfg.state))
    dataset = read_dataset_json(cfg.data, s3_endpoint=cfg.s3_endpoint)
    bands = list(dataset["collections"][plan.collection]["bands"])
    index = _written_index(store, [*_INDEX_COLUMNS, "processing_version"])
    index = index.filter(pc.equal(index["collection"], plan.collection))
    preproc = inc.preproc_of(plan, bands, index["processing_version"].to_pylist())
    try:
        run = inc.plan_incremental(store, plan.collection, bands, state, inc_cfg,
                                   model_version=plan.checkpoint_sha256, preproc=preproc)
    except ValueError as err:  # e.g. index_delta on bands without red/NIR
        raise ConfigError(f"--incremental: {err}") from err
    fresh: dict[str, np.ndarray] = {}
    if run.selected:
        ds = ray.data.from_arrow(run.selected)  # [2] only the selected rows, already read by the change stage
        ids, vectors, seconds = _embed(ds, checkpoint, plan, cfg, use_gpu)
        fresh = dict(zip(ids, vectors, strict=True))
        run.accounting.model_seconds += seconds
    rows, vectors_by_id, audit = inc.merge_outputs(run, fresh, inc_cfg)
    table = None
    if rows:
        ids = [r["chip_id"] for r in rows]
        table = _embeddings_table(ids, np.stack([vectors_by_id[c] for c in ids]), index, plan)
        by_id = {r["chip_id"]: r for r in rows}
        ordered = [by_id[c] for c in table["chip_id"].to_pylist()]
        for f in inc.PROVENANCE_FIELDS:
            table = table.append_column(f, pa.array([r[f.name] for r in ordered], f.type))
    done = {p.item.item_id for p in run.items if p.mode == "done"}
    old = inc.history(state)
    parts = [t for t in (table,) if t is not None]
    if old is not None and done:
        parts.append(old.filter(pc.is_in(old["item_id"], pa.array(sorted(done), pa.string()))))
    if not parts:
        raise ConfigError(f"--incremental: nothing to write for {plan.collection!r} (every scene was skipped)")
    schema = parts[0].schema.remove_metadata()
    merged = pa.concat_tables([t.cast(schema) for t in (p.replace_schema_metadata(None) for p in parts)])
    merged = merged.sort_by("chip_id")
    merged = merged.replace_schema_metadata({b"geo": json.dumps(_geo_metadata(merged)).encode()})
    inc.commit_state(run, state, plan.checkpoint_sha256, preproc)
    keep = [] if old is None else [old.filter(pc.invert(pc.is_in(old["chip_id"], merged["chip_id"])))]
    inc.write_history(state, pa.concat_tables([*(k.cast(schema) for k in keep if k.num_rows), merged.cast(schema)]))
    acc = run.accounting
    for warning in (acc.cost_warning(), "; ".join(audit["reasons"]) or None):
        if warning:
            log.warning("incremental: %s", warning)
    record = {
        "job": "embed", "state": str(state.root), "collection": plan.collection,
        "model_version": plan.checkpoint_sha256, "preproc_version": preproc, "validity_source": run.validity_source,
        "config": inc_cfg.to_dict(),
        "accounting": acc.to_dict(), "audit": audit,
        "scenes": [{"item_id": p.item.item_id, "tile": p.tile, "mode": p.mode, **p.stats} for p in run.items],
    }
    state.write_json("accounting.json", record)
    print(acc.summary_line())
    return merged, {"incremental": {"accounting": acc.to_dict(), "audit": audit,
                                    "accounting_json": str(state.root / "accounting.json")}}


def run_embed(cfg: EmbedConfig) -> dict[str, Any]:
    """Embed every written chip of one collection; returns the run summary (also written next to the output)."""
    import ray

    start = time.perf_counter()
    checkpoint = read_checkpoint(cfg.model, s3_endpoint=cfg.s3_endpoint)
    plan = plan_embedding(cfg, checkpoint)
    log.info(
        "embedding %s with %s (stem %r, stats from %s, sha256 %s)",
        plan.collection, plan.model_name, plan.modality, plan.stats_source, plan.checkpoint_sha256[:12],
    )
    init_ray()  # [1] join the cluster (RAY_ADDRESS under `ray job submit`) or start a local one
    use_gpu = _use_gpu(cfg)
    store = OutputStore.open(cfg.data, s3_endpoint=cfg.s3_endpoint)
    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = False
    extra: dict[str, Any] = {}
    if cfg.incremental:
        table, extra = _run_incremental(cfg, plan, checkpoint, store, use_gpu)
    else:
        ds = ray.data.read_parquet(  # [2] the collection's shards, pixel columns only (pushed into the Parquet read)
            [store.path(p) for p in plan.shards], filesystem=store.filesystem
        ).select_columns(_ROW_COLUMNS)
        chip_ids, vectors, _ = _embed(ds, checkpoint, plan, cfg, use_gpu)
        table = _embeddings_table(chip_ids, vectors, _written_index(store, _INDEX_COLUMNS), plan)
    out = OutputStore.open(cfg.output, s3_endpoint=cfg.s3_endpoint)
    out.write_table("embeddings.parquet", table)
    summary = {
        "embeddings": out.full_uri("embeddings.parquet"),
        "chips": table.num_rows,
        "dim": int(table.schema.field("embedding").type.list_size),
        "collection": plan.collection,
        "model": plan.model_name,
        "modality": plan.modality,
        "checkpoint_sha256": plan.checkpoint_sha256,
        "stats_source": plan.stats_source,
        "device": "cuda" if use_gpu else "cpu",
        "seconds": round(time.perf_counter() - start, 2),
        "config": to_dict(cfg) | {"model": _public_uri(cfg.model)},
        **extra,
    }
    out.write_bytes("embed_summary.json", json.dumps(summary, indent=2).encode())
    return summary


def _public_uri(uri: str) -> str:
    from pipeline.cog import redact_href

    return redact_href(uri)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(EmbedConfig, argv, description=__doc__.split("\n\n")[0])
        if cfg.batch_size < 1 or cfg.workers < 1:
            raise ConfigError(f"--batch-size ({cfg.batch_size}) and --workers ({cfg.workers}) must be at least 1")
        if cfg.incremental:
            from jobs._incremental import StateDir, load_incremental_config

            if not cfg.state:
                raise ConfigError("--incremental needs --state DIR (where each tile's reference and chip cache live)")
            StateDir.open(cfg.state)
            load_incremental_config(cfg.incremental_config, cfg.change_score)
        summary = run_embed(cfg)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"embed: {summary['chips']} chips of {summary['collection']} → {summary['embeddings']} "
        f"({summary['dim']}-d, {summary['model']}, stem {summary['modality']}, {summary['device']}, "
        f"{summary['seconds']} s)"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
