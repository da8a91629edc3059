"""Trained feature heads (EAGLE style): the model, its draft backend and its training."""

from .backend import FeatureTap, HeadBackend
from .model import FeatureHead, HeadShape, default_head_dir, load_head, target_fingerprint

__all__ = [
    "FeatureHead",
    "FeatureTap",
    "HeadBackend",
    "HeadShape",
    "default_head_dir",
    "load_head",
    "target_fingerprint",
]
