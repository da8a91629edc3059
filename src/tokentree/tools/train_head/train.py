"""``tokentree train-head``: train a feature head for a transformers target on this machine.

Data: texts (the shipped prompts that no benchmark uses, optional answers the target writes, any
local text files) are forwarded once through the target; its features, its greedy next token at
every position and the text's tokens are kept (``features.pt``, reused on resume). Training
unrolls the head ``unroll`` steps from each position on its own predicted features (as it drafts),
with a cross-entropy loss against the target's greedy token over the draft vocabulary plus a
smooth-L1 loss against the target's next feature. Held-out documents give an acceptance estimate.
"""

from __future__ import annotations

import dataclasses
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ...errors import TokentreeError
from ...files import write_atomically
from ...head.backend import FeatureTap
from ...head.model import FeatureHead, HeadShape, target_fingerprint

FEATURES, TRAIN_STATE = "features.pt", "train_state.pt"


@dataclass
class TrainHeadConfig:
    """What ``tokentree train-head`` does (CLI flags ``--<field>``)."""

    tokens: int = 60_000  # text tokens forwarded through the target for training data
    minutes: float = 10.0  # training time (extraction not counted)
    steps: int = 0  # stop after this many optimiser steps in this run too (0: time only)
    draft_vocab: int = 8192  # output rows: the target's most frequent greedy tokens in the data
    intermediate: int = 0  # the step's MLP width (0: the target's hidden size)
    unroll: int = 3  # head steps trained from each position (drafting depth it learns)
    batch: int = 256  # positions per optimiser step
    lr: float = 1e-3
    held_out: float = 0.1  # share of documents kept out of training, for the estimate
    max_doc_tokens: int = 1024  # longer texts are cut
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.tokens >= 16, "tokens must be >= 16"),
            (self.minutes > 0, "minutes must be > 0"),
            (self.steps >= 0, "steps must be >= 0"),
            (self.draft_vocab >= 2, "draft_vocab must be >= 2"),
            (self.intermediate >= 0, "intermediate must be >= 0"),
            (1 <= self.unroll <= 8, "unroll must be in [1, 8]"),
            (self.batch >= 1, "batch must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 < self.held_out < 1, "held_out must be in (0, 1)"),
            (self.max_doc_tokens >= 8, "max_doc_tokens must be >= 8"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class FeatureData:
    """The target read over the training texts, documents concatenated.

    tokens [T] (int), labels [T] (the target's greedy token after each position), features [T, H]
    (the target's, stored in its dtype), starts: each document's first index (and T at the end).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor
    starts: list[int]

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        torch.save(vars(self), buffer)
        write_atomically(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> FeatureData:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


@torch.inference_mode()
def extract(
    model: nn.Module,
    documents: Sequence[Sequence[int]],
    max_tokens: int,
    progress: Callable[[int], None] = lambda n: None,
) -> FeatureData:
    """Forward ``documents`` (token ids) through ``model`` until ``max_tokens`` are read."""
    tap = FeatureTap(model)
    tokens, labels, features, starts, total = [], [], [], [], 0
    head = model.get_output_embeddings()
    try:
        for doc in documents:
            doc = list(doc)[: max_tokens - total]
            if len(doc) < 2:
                continue
            ids = torch.tensor([doc], device=model.device)
            model(input_ids=ids, position_ids=torch.arange(len(doc), device=ids.device)[None])
            feats = tap.features[0]
            starts.append(total)
            tokens.append(ids[0].cpu())
            labels.append(torch.cat([head(chunk).argmax(-1) for chunk in feats.split(256)]).cpu())
            features.append(feats.cpu())
            total += len(doc)
            progress(len(doc))
            if total >= max_tokens:
                break
    finally:
        tap.close()
    if not starts:
        raise TokentreeError("no training text: every document was shorter than two tokens")
    return FeatureData(torch.cat(tokens), torch.cat(labels), torch.cat(features), starts + [total])


def draft_vocabulary(labels: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` most frequent labels (ascending ids), fewer if fewer occur."""
    counts = torch.bincount(labels)
    top = counts.topk(min(size, int((counts > 0).sum()))).indices
    return top.sort().values


def split_documents(data: FeatureData, held_out: float, seed: int) -> tuple[list, list]:
    """(train, held-out) document index ranges [(start, end)]: documents in a seeded random order
    are held out until they hold ``held_out`` of the tokens (none when there is one document)."""
    docs = list(zip(data.starts[:-1], data.starts[1:]))
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    test, tokens = [], 0
    for i in order[:-1]:
        if tokens >= held_out * data.starts[-1]:
            break
        test.append(docs[i])
        tokens += docs[i][1] - docs[i][0]
    return [d for d in docs if d not in test], test


def unroll_positions(ranges: list[tuple[int, int]], unroll: int) -> torch.Tensor:
    """Every index i with i - 1 and i + unroll - 1 in the same document: where an unroll starts."""
    parts = [torch.arange(a + 1, b - unroll + 1) for a, b in ranges if b - a > unroll]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def unrolled_loss(
    head: FeatureHead, data: FeatureData, at: torch.Tensor, to_draft: torch.Tensor, unroll: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss of ``unroll`` head steps from positions ``at`` [B] on its own features, and each
    step's [B] hits (top-1 equal to the target's greedy token).

    ``to_draft`` [V]: a token's draft-vocabulary row, -1 outside it (such labels count as misses
    and add no cross-entropy).
    """
    feature = data.features[at - 1].float()
    total, hits = 0.0, []
    for k in range(unroll):
        feature = head.step(feature, data.tokens[at + k])
        target = data.features[at + k].float()
        rows = to_draft[data.labels[at + k]]
        logits = head.logits(feature)
        inside = rows >= 0
        if inside.any():
            total = total + nn.functional.cross_entropy(logits[inside], rows[inside])
        total = total + nn.functional.smooth_l1_loss(feature, target)
        hits.append((logits.argmax(-1) == rows) & inside)
    return total / unroll, hits


def accept_estimate(hit_rates: Sequence[float]) -> float:
    """Expected drafted tokens accepted by a greedy chain whose step k is right with probability
    ``hit_rates[k]`` given the earlier ones were (their products summed)."""
    expected, alive = 0.0, 1.0
    for rate in hit_rates:
        alive *= rate
        expected += alive
    return expected


@torch.no_grad()
def evaluate(head: FeatureHead, data, positions, to_draft, unroll: int) -> dict:
    """Held-out loss, per-step top-1 rates, and the chain acceptance estimate."""
    if not len(positions):
        return {"note": "no held-out documents long enough to estimate"}
    losses, hits = [], [[] for _ in range(unroll)]
    for chunk in positions.split(1024):
        loss, chunk_hits = unrolled_loss(head, data, chunk, to_draft, unroll)
        losses.append(float(loss) * len(chunk))
        for k, h in enumerate(chunk_hits):
            hits[k].append(h.float())
    rates = [float(torch.cat(h).mean()) for h in hits]
    return {
        "loss": sum(losses) / len(positions),
        "top1_by_step": [round(r, 4) for r in rates],
        "accepted_per_chain_estimate": round(accept_estimate(rates), 3),
    }


def new_head(model: nn.Module, data: FeatureData, config: TrainHeadConfig) -> FeatureHead:
    hidden = int(data.features.shape[-1])
    vocab = draft_vocabulary(data.labels, config.draft_vocab)
    shape = HeadShape(
        hidden_size=hidden,
        intermediate_size=config.intermediate or hidden,
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        draft_vocab=len(vocab),
        target=target_fingerprint(model),
    )
    torch.manual_seed(config.seed)
    return FeatureHead(shape, vocab)


def train(
    model: nn.Module,
    data: FeatureData,
    config: TrainHeadConfig,
    out: Path,
    head: FeatureHead | None = None,
    state: dict | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> dict:
    """Train a new head (or ``head`` with its optimiser ``state``, resumed) for ``config.minutes``
    more; checkpoints to ``out`` every minute and at the end. Returns the final report."""
    head = (head or new_head(model, data, config)).attach(model).float()
    head.rows = head.rows.float()
    to_draft = torch.full((head.shape.vocab_size,), -1, dtype=torch.long)
    to_draft[head.draft_ids] = torch.arange(len(head.draft_ids))
    train_docs, test_docs = split_documents(data, config.held_out, config.seed)
    train_at = unroll_positions(train_docs, config.unroll)
    if not len(train_at):
        raise TokentreeError("too little training text for one unrolled example")
    trainable = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    state = state or {"step": 0, "seconds": 0.0}
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    generator = torch.Generator().manual_seed(config.seed + state["step"])
    budget, began, saved = config.minutes * 60, time.perf_counter(), time.perf_counter()
    first, last = state["step"], state["step"] + config.steps if config.steps else math.inf
    while (elapsed := time.perf_counter() - began) < budget and state["step"] < last:
        progress = max(elapsed / budget, (state["step"] - first) / (last - first))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config.lr, state["step"], progress)
        at = train_at[torch.randint(len(train_at), (config.batch,), generator=generator)]
        loss, _ = unrolled_loss(head, data, at, to_draft, config.unroll)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        state["step"] += 1
        if state["step"] % 50 == 0:
            log(f"step {state['step']}  {elapsed:.0f}/{budget:.0f} s  loss {loss.item():.3f}")
        if time.perf_counter() - saved > 60:
            _checkpoint(head, optimizer, state, state["seconds"] + elapsed, out, config, {})
            saved = time.perf_counter()
    state["seconds"] += time.perf_counter() - began
    head.eval()
    test_at = unroll_positions(test_docs, config.unroll)
    report = {"held_out": evaluate(head, data, test_at, to_draft, config.unroll)}
    report.update(
        train_tokens=int(sum(b - a for a, b in train_docs)),
        held_out_tokens=int(sum(b - a for a, b in test_docs)),
        draft_vocab_coverage=round(float((to_draft[data.labels] >= 0).float().mean()), 4),
    )
    _checkpoint(head, optimizer, state, state["seconds"], out, config, report)
    return report


def learning_rate(peak: float, step: int, progress: float) -> float:
    """Linear warm-up over the first 50 steps, cosine decay over this run's time budget."""
    return peak * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _checkpoint(head, optimizer, state, seconds, out: Path, config, report: dict) -> None:
    head.save(
        out,
        {"steps": state["step"], "seconds": round(seconds, 1), "config": dataclasses.asdict(config)}
        | report,
    )
    buffer = io.BytesIO()
    torch.save({**state, "seconds": seconds, "optimizer": optimizer.state_dict()}, buffer)
    write_atomically(out / TRAIN_STATE, buffer.getvalue())
