"""pipeline: STAC-driven ingest of optical and SAR scenes into self-describing Parquet chip shards."""
