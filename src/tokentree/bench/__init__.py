"""Spec-Bench-style benchmark harness: HF baselines and tokentree drafters in one process."""
