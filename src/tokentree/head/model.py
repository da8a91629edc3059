"""A feature head (EAGLE style): predicts the target's next feature from its current one.

The target's *feature* at a position is the output of its final norm there, the vector its output
layer turns into logits. Given the feature ``f`` at position i and the token at position i + 1,
the head predicts the feature at i + 1; the target's own output layer, restricted to a draft
vocabulary (the tokens the target predicts most often, as EAGLE-3 does), turns it into draft
logits. Applied again to its own prediction it drafts deeper, so a tree is drafted without the
target: every node's feature is the head's step from its parent's feature and its own token.

Unlike EAGLE's decoder layer the step has no attention over earlier positions: the target's
feature already summarises the context, and a recurrent step keeps drafting a tree free of any
cache. Only the step is trained; the embedding and the output rows stay the target's.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import TokentreeError
from ..files import write_atomically

WEIGHTS, CONFIG = "head.pt", "head.json"


@dataclass(frozen=True)
class HeadShape:
    """What a head is built from (``head.json``); ``target`` fingerprints the target it reads."""

    hidden_size: int
    intermediate_size: int
    vocab_size: int  # the target's
    draft_vocab: int  # rows of the output layer the head scores
    target: str  # see target_fingerprint


def target_fingerprint(model: nn.Module) -> str:
    """A short digest of the target's embedding and output rows: a head trained on another model
    is refused at load (signs only, so dtypes of one model agree)."""
    digest = hashlib.sha256()
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        signs = weight[:: max(1, weight.shape[0] // 64), :16].detach().cpu() > 0  # dtype-proof
        digest.update(str(tuple(weight.shape)).encode() + signs.numpy().tobytes())
    return digest.hexdigest()[:16]


def final_norm(model: nn.Module) -> nn.Module:
    """The module whose output the target's output layer reads (its decoder's final norm)."""
    norm = getattr(model.get_decoder(), "norm", None)
    if not isinstance(norm, nn.Module):
        raise TokentreeError(
            f"{type(model).__name__} has no final norm module (model.get_decoder().norm) to read "
            "features from; the feature head supports Llama-, Qwen-, Mistral- and Gemma-style "
            "models"
        )
    return norm


class RMSNorm(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return (x.float() * scale).to(x.dtype) * self.weight


class FeatureHead(nn.Module):
    """The trainable step plus the target's (frozen, unsaved) embedding and draft output rows.

    ``draft_ids`` [K]: the target token id of each draft-vocabulary row.
    """

    def __init__(self, shape: HeadShape, draft_ids: torch.Tensor):
        super().__init__()
        hidden = shape.hidden_size
        self.shape = shape
        self.register_buffer("draft_ids", draft_ids.long().clone())
        self.mix = nn.Linear(2 * hidden, hidden)  # [feature, next token's embedding] -> hidden
        self.norm = RMSNorm(hidden)
        self.gate = nn.Linear(hidden, shape.intermediate_size, bias=False)
        self.up = nn.Linear(hidden, shape.intermediate_size, bias=False)
        self.down = nn.Linear(shape.intermediate_size, hidden, bias=False)
        self.out_norm = RMSNorm(hidden)
        self.embed: torch.Tensor | None = None  # [V, H], the target's
        self.rows: torch.Tensor | None = None  # [K, H], the target's output rows of draft_ids

    def attach(self, model: nn.Module) -> FeatureHead:
        """Read the embedding and output rows of ``model`` (checked against the fingerprint) and
        take its dtype and device."""
        if target_fingerprint(model) != self.shape.target:
            raise TokentreeError(
                "this head was trained for another target model (its fingerprint differs): "
                "train one for this target with 'tokentree train-head'"
            )
        weight = model.get_output_embeddings().weight
        self.to(device=weight.device, dtype=weight.dtype)
        self.embed = model.get_input_embeddings().weight.detach()
        self.rows = weight.detach()[self.draft_ids.to(weight.device)]
        return self

    def step(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[m, H] features at positions i, [m] tokens at i + 1 -> [m, H] predicted features at
        i + 1."""
        x = self.mix(torch.cat([features, self.embed[tokens].to(features.dtype)], dim=-1))
        h = self.norm(x)
        x = x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))
        return self.out_norm(x)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[m, H] features -> [m, K] logits over the draft vocabulary."""
        return features @ self.rows.T

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        """Write ``head.pt`` (the trained step and draft ids) and ``head.json``, atomically."""
        directory = Path(directory)
        state = {
            k: v.detach().cpu().float() if v.is_floating_point() else v.cpu()
            for k, v in self.state_dict().items()
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_atomically(directory / WEIGHTS, buffer.getvalue())
        meta = {"shape": asdict(self.shape), **(extra or {})}
        write_atomically(directory / CONFIG, (json.dumps(meta, indent=1) + "\n").encode())


def load_head(directory: str | Path) -> FeatureHead:
    """A head saved by :meth:`FeatureHead.save` (not yet attached to a target)."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise TokentreeError(
            f"no trained head in {directory} (expected {CONFIG} and {WEIGHTS}): "
            "run 'tokentree train-head' first"
        )
    try:
        meta = json.loads((directory / CONFIG).read_text())
        shape = HeadShape(**meta["shape"])
        state = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
        head = FeatureHead(shape, state["draft_ids"])
        head.load_state_dict(state)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise TokentreeError(f"{directory}: not a readable tokentree head ({exc})") from exc
    return head.eval()


def default_head_dir(model: nn.Module) -> Path:
    """Where ``tokentree train-head`` puts the head of ``model`` unless told otherwise (keyed by the
    target's fingerprint, like the converted weights are by their source)."""
    from ..files import cache_dir

    return cache_dir() / "heads" / target_fingerprint(model)
