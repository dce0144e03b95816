"""Training on Ray Train: the loop, its state and checkpoints, the step, stages, FSDP, the periodic probe."""
