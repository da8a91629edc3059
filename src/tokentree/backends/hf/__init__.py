"""The transformers backend and everything only it needs: tree forwards through a 4-D mask
(``backend``), a packed batch of lanes (``batch``), the static cache (``static``), state-space
models (``ssm_backend``, ``ssm/``), cache compaction (``kvcache``) and the attention functions
registered with transformers (``tree_attention``, ``lane_attention``)."""

from .backend import HFBackend

__all__ = ["HFBackend"]
