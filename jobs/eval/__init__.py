"""Evaluation on frozen features: the probes, the evaluation datasets, embeddings."""
