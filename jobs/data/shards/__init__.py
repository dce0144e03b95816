"""Parquet shards and their manifest, bad rows, reading and rewriting shard sets, `data check`."""
