"""The command line, ablation specs, Ray Tune sweeps and the one MLflow writer."""
