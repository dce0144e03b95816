"""Benchmarks behind `tipslab bench`: the step, the data pipeline, ingestion, scenes, Ray Train's overhead, FLOPs."""
