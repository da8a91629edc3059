"""What ``tokentree train-head`` runs: texts, the target's features (cached), training, report."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import TokentreeError
from ...head.model import default_head_dir, load_head
from .data import chat_text, corpus_documents, training_prompts
from .train import FEATURES, TRAIN_STATE, FeatureData, TrainHeadConfig, extract, train


@dataclass
class TrainHeadJob:
    """The command's own flags besides :class:`TrainHeadConfig`'s."""

    target: str | None = None  # HF dir or hub id (default: the embedded target)
    dtype: str = "bfloat16"  # the dtype the head will draft for (features are read in it)
    out: str | None = None  # default: $TOKENTREE_CACHE/heads/<target fingerprint>
    corpus: list[str] = field(default_factory=list)  # extra local text files
    answers: int = 0  # training prompts the target answers first (greedy; their text is added)
    answer_tokens: int = 128
    resume: bool = False  # continue the head in ``out`` (features in ``out`` are always reused)


def run_train_head(job: TrainHeadJob, config: TrainHeadConfig) -> Path:
    from ...api import resolve_dtype
    from ...backends.llamacpp import is_gguf
    from ...models import EMBEDDED_TARGET, load_model

    if job.target is not None and is_gguf(job.target):
        raise TokentreeError(
            "train-head reads a transformers target (the head drafts on --backend hf): give its HF "
            "directory or hub id, or nothing for the embedded target"
        )
    device = torch.device("cpu")
    target = load_model(job.target, EMBEDDED_TARGET, resolve_dtype(job.dtype, device), device)
    model = target.model.eval()
    out = Path(job.out) if job.out else default_head_dir(model)
    head = state = None
    if job.resume:
        head = load_head(out)
        if not (out / TRAIN_STATE).is_file():
            raise TokentreeError(f"--resume: no {TRAIN_STATE} in {out}")
        state = torch.load(out / TRAIN_STATE, map_location="cpu", weights_only=False)
    if (out / FEATURES).is_file():  # delete it to read the texts again
        data = FeatureData.load(out / FEATURES)
        say(f"features: {len(data.tokens)} tokens from {out / FEATURES}")
    else:
        data = read_target(target, job, config)
        data.save(out / FEATURES)
    report = train(model, data, config, out, head, state)
    say(f"head saved to {out}")
    for key, value in report.items():
        say(f"  {key}: {value}")
    say(f"use it: tokentree generate --backend hf --drafter eagle --eagle-head {out} ...")
    return out


def read_target(target, job: TrainHeadJob, config: TrainHeadConfig) -> FeatureData:
    """Forward the training texts through the target (with a progress bar)."""
    from tqdm import tqdm

    prompts = training_prompts()
    answers = write_answers(job.target, prompts[: job.answers], job.answer_tokens)
    documents = [
        chat_text(target.tokenizer, p.turns[0], answers.get(i, ""))[: config.max_doc_tokens]
        for i, p in enumerate(prompts)
    ]
    order = list(range(len(documents)))  # answered prompts first, the rest interleaved by seed
    rest = order[len(answers) :]
    shuffled = torch.randperm(len(rest), generator=torch.Generator().manual_seed(config.seed))
    documents = [documents[i] for i in order[: len(answers)]] + [
        documents[rest[int(j)]] for j in shuffled
    ]
    documents = corpus_documents(target.tokenizer, job.corpus) + documents
    started = time.perf_counter()
    with tqdm(total=config.tokens, unit="tok", desc="target features", file=sys.stderr) as bar:
        data = extract(target.model, documents, config.tokens, bar.update)
    say(f"read {len(data.tokens)} tokens in {time.perf_counter() - started:.0f} s")
    return data


def write_answers(spec: str | None, prompts, max_new_tokens: int) -> dict[int, str]:
    """The target's greedy answers to ``prompts`` (llama.cpp for the embedded target on a CPU when
    installed: several times faster than transformers here)."""
    if not prompts:
        return {}
    from ...api import load

    gen = load(spec, drafter="auto")
    answers = {}
    for i, prompt in enumerate(prompts):
        answers[i] = gen.generate(prompt.turns[0], max_new_tokens=max_new_tokens, chat=True).text
        say(f"answer {i + 1}/{len(prompts)}: {len(answers[i])} characters")
    return answers


def say(line: str) -> None:
    print(f"tokentree: {line}", file=sys.stderr)
