"""What a GGUF format costs in quality and buys in speed, against a reference file of the same
model.

For each file: perplexity on a code slice (HumanEval solutions) and a prose slice (Spec-Bench
questions), scored by llama.cpp itself (llama-cpp-python's ``Llama.eval``, 512-token windows);
greedy agreement with the reference (identical 64-token answers, mean common prefix) on prompts
no benchmark table uses; and plain decoding speed (``Llama.generate``, greedy, median of prompts).

    python benchmarks/formats.py REF.gguf OTHER.gguf [...] --out benchmarks/results/formats
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "src" / "tokentree" / "bench" / "data"
WINDOW = 512


def slices() -> dict[str, str]:
    code = [
        json.loads(line) for line in (DATA / "humaneval.jsonl").read_text().splitlines()[100:140]
    ]
    prose = [
        json.loads(line)
        for line in (DATA / "spec_bench_questions.jsonl").read_text().splitlines()[200:260]
    ]
    return {
        "code": "\n\n".join(r["prompt"] + r["canonical_solution"] for r in code),
        "prose": "\n\n".join(r["turns"][0] for r in prose),
    }


def agreement_prompts() -> list[str]:
    code = [
        json.loads(line) for line in (DATA / "humaneval.jsonl").read_text().splitlines()[150:158]
    ]
    prose = [
        json.loads(line)
        for line in (DATA / "spec_bench_questions.jsonl").read_text().splitlines()[300:308]
    ]
    return ["Complete the following Python function:\n\n" + r["prompt"] for r in code] + [
        r["turns"][0] for r in prose
    ]


def perplexity(llm, text: str, max_tokens: int = 4096) -> float:
    tokens = llm.tokenize(text.encode(), add_bos=False)[:max_tokens]
    nll, count = 0.0, 0
    for begin in range(0, len(tokens) - 1, WINDOW):
        window = tokens[begin : begin + WINDOW]
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: len(window)], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll -= sum(logprobs[i, window[i + 1]] for i in range(len(window) - 1))
        count += len(window) - 1
    return math.exp(nll / count)


def greedy(llm, ids: list[int], n: int) -> tuple[list[int], float]:
    start, out = time.perf_counter(), []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) >= n or token == llm.token_eos():
            break
    return out, len(out) / (time.perf_counter() - start)


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "files", nargs="+", help="the reference GGUF first, then the formats to compare"
    )
    parser.add_argument("--out", default="formats-out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    from llama_cpp import Llama

    from tokentree.models import gguf_tokenizer

    tokenizer = gguf_tokenizer(Path(args.files[0]).resolve(), "formats-reference")
    prompts = [
        tokenizer(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        ).input_ids
        for p in agreement_prompts()
    ]
    texts, rows, reference = slices(), [], None
    for path in args.files:
        llm = Llama(
            path,
            n_ctx=2048,
            n_batch=WINDOW,
            logits_all=True,
            n_threads=args.threads,
            verbose=False,
            flash_attn=True,
        )
        ppl = {name: perplexity(llm, text) for name, text in texts.items()}
        llm = Llama(path, n_ctx=2048, n_threads=args.threads, verbose=False, flash_attn=True)
        answers, speeds = zip(*(greedy(llm, p, args.new_tokens) for p in prompts))
        reference = reference or answers
        rows.append(
            {
                "file": Path(path).name,
                "size_mib": Path(path).stat().st_size / 2**20,
                "ppl_code": ppl["code"],
                "ppl_prose": ppl["prose"],
                "identical": sum(a == r for a, r in zip(answers, reference)),
                "prompts": len(prompts),
                "mean_common_prefix": statistics.mean(
                    common_prefix(a, r) for a, r in zip(answers, reference)
                ),
                "plain_tokens_per_s": statistics.median(speeds),
            }
        )
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "formats.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "| file | MiB | ppl code | ppl prose | greedy answers identical to the first file | mean "
        "common prefix "
        f"(of {args.new_tokens}) | plain tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['file']} | {r['size_mib']:.0f} | {r['ppl_code']:.3f} | {r['ppl_prose']:.3f} | "
        f"{r['identical']}/{r['prompts']} | {r['mean_common_prefix']:.1f} | "
        f"{r['plain_tokens_per_s']:.1f} |"
        for r in rows
    ]
    (out / "formats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
