"""OpenVINO GenAI as a baseline: the standard optimum-intel export of the same weights, and
GenAI's plain, prompt-lookup and draft-model decoding on it.

optimum-intel pins transformers < 5.6, below this project's floor, so it lives in a virtual
environment of its own (``--optimum-venv``, made with ``pip install torch==2.13.0
"transformers>=5.4,<5.6" optimum==2.3.0 nncf==3.4.0 openvino==2026.4.1
openvino-tokenizers==2026.4.1.0 accelerate && pip install --no-deps optimum-intel==2.2.0``); it
exports the same dequantized weights tokentree's OpenVINO backend starts from, with the same NNCF
compression (int4 symmetric, groups of 128, all layers). Used by ``benchmarks/engines.py
--genai``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tokentree.files import cache_dir
from tokentree.models import EMBEDDED_DRAFT, EMBEDDED_TARGET, locate

WEIGHT_FLAGS = {
    "int4": ["--weight-format", "int4", "--sym", "--group-size", "128", "--ratio", "1.0"],
    "int8": ["--weight-format", "int8", "--sym"],
}


def optimum_export(source: Path, out: Path, weights: str, venv: Path) -> Path:
    """``optimum-cli export openvino`` of ``source`` into ``out``, once."""
    if (out / "openvino_model.xml").exists() and (out / "openvino_tokenizer.xml").exists():
        return out
    command = [str(venv / "bin" / "optimum-cli"), "export", "openvino", "--model", str(source)]
    command += ["--task", "text-generation-with-past", *WEIGHT_FLAGS[weights], str(out)]
    print(" ".join(command), file=sys.stderr)
    subprocess.run(command, check=True)
    return out


def standard_models(venv: Path, weights: str = "int4") -> tuple[Path, Path]:
    """(target, draft) standard exports of the embedded pair."""
    root = cache_dir() / "genai"
    target = Path(locate(None, EMBEDDED_TARGET, torch.float32))
    draft = Path(locate(None, EMBEDDED_DRAFT, torch.float32))
    return (
        optimum_export(target, root / f"{EMBEDDED_TARGET.name}-{weights}", weights, venv),
        optimum_export(draft, root / f"{EMBEDDED_DRAFT.name}-{weights}", weights, venv),
    )


class GenAIMethod:
    """OpenVINO GenAI's LLMPipeline on token ids, greedy: ``mode`` plain, pld (prompt lookup, 5
    tokens from 3-grams) or draft (the 0.5B draft, 5 tokens a step)."""

    def __init__(self, mode: str, target: Path, draft: Path, threads: int = 2):
        import openvino_genai as genai

        self.genai, self.mode = genai, mode
        props = {"INFERENCE_NUM_THREADS": threads}
        if mode == "plain":
            self.pipe = genai.LLMPipeline(str(target), "CPU", **props)
        elif mode == "pld":
            self.pipe = genai.LLMPipeline(str(target), "CPU", prompt_lookup=True, **props)
        else:
            assistant = genai.draft_model(str(draft), "CPU", **props)
            self.pipe = genai.LLMPipeline(str(target), "CPU", draft_model=assistant, **props)

    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        import openvino as ov

        config = self.genai.GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.do_sample = False
        if self.mode == "pld":
            config.num_assistant_tokens, config.max_ngram_size = 5, 3
        elif self.mode == "draft":
            config.num_assistant_tokens = 5
        tensor = ov.Tensor(torch.tensor([ids], dtype=torch.int64).numpy())
        mask = ov.Tensor(torch.ones(1, len(ids), dtype=torch.int64).numpy())
        result = self.pipe.generate(self.genai.TokenizedInputs(tensor, mask), config)
        return [int(t) for t in result.tokens[0]]
