"""Tiny random models built from configs (fp32, no downloads)."""

from __future__ import annotations

import os
import string

import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB = 96
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def tiny_config(family: str, **overrides):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(overrides)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "gemma3":
        common.setdefault("head_dim", 8)
        common.setdefault("sliding_window", 6)
        common.setdefault("layer_types", ["sliding_attention", "full_attention"])
        return Gemma3TextConfig(**common)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(family, **overrides)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="sdpa", dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(params=["llama", "qwen2", "gemma3"])
def family(request):
    return request.param


def tiny_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """A character-level tokenizer with exactly VOCAB ids (0 pad, 1 bos, 2 eos)."""
    chars = string.ascii_letters + string.digits + " \n" + string.punctuation[: VOCAB - 3 - 64]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    assert len(vocab) == VOCAB
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture
def saved_tiny_model(tmp_path):
    """A tiny Llama with tokenizer saved as a local HF directory."""
    path = tmp_path / "tiny-llama"
    tiny_model("llama", seed=5).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Profiles, converted models and other cached files go to a temporary directory, never
    ~/.cache."""
    if "TOKENTREE_CACHE" not in os.environ:
        monkeypatch.setenv(
            "TOKENTREE_CACHE", str(tmp_path_factory.getbasetemp() / "tokentree-cache")
        )


def train_tiny_head(model, out, steps: int = 400, prompts: int = 24, length: int = 48):
    """A feature head for ``model`` trained ``steps`` steps on its own greedy text (random prompts
    continued greedily: the text a head must learn to draft); returns (head dir, report, data)."""
    from tokentree.tools.train_head.train import TrainHeadConfig, extract, train

    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    documents = []
    with torch.inference_mode():
        for _ in range(prompts):
            start = torch.randint(3, vocab, (1, 4), generator=generator)
            documents.append(
                model.generate(
                    start,
                    attention_mask=torch.ones_like(start),
                    do_sample=False,
                    max_new_tokens=length,
                    pad_token_id=0,
                    eos_token_id=None,
                )[0].tolist()
            )
    config = TrainHeadConfig(
        tokens=prompts * (length + 4),
        minutes=10,
        steps=steps,
        draft_vocab=vocab,
        batch=128,
        lr=3e-3,
    )
    data = extract(model, documents, config.tokens)
    report = train(model, data, config, out, log=lambda line: None)
    return out, report, data
