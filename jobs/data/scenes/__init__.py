"""Procedural scenes with exact dense ground truth (Kubric's idea without a renderer) and their captions."""
