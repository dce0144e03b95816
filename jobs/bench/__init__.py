"""Benchmarks behind `tipslab bench`: the step, the data pipeline, ingestion, scenes, Ray Train's overhead, FLOPs."""

# The parts of one training step that `tipslab bench step` times (jobs/bench/step.py).
COMPONENTS = ("data_to_device", "student_fwd", "text_fwd", "teacher_fwd", "losses", "backward", "optimizer", "ema")
