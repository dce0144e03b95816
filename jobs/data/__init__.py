"""Datasets: Parquet shards with a manifest, and the procedural scene generator."""
