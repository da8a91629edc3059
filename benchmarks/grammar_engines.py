"""llguidance against xgrammar on our tokenizers: what each costs a constrained tree engine.

For each tokenizer (the embedded Qwen2.5 target's, SmolLM2's) and each JSON schema of a small
set: the tokenizer's preparation, the grammar's compilation, the mask of one position along a
valid answer (median and 95th percentile over the answer's tokens), and a tree walk (16 nodes:
consume, mask, roll back; what ``constraints.state.TreeWalk`` does each step). Interleaved:
each engine's measurements alternate, repeated ``--repeats`` times; medians reported.

    python benchmarks/grammar_engines.py --out benchmarks/results/cpu-grammar-engines
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from fresh_runs import write_run_json

SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "email": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "email", "tags"],
        "additionalProperties": False,
    },
    "tool_call": {
        "type": "object",
        "properties": {
            "name": {"enum": ["get_weather", "search", "send_email"]},
            "arguments": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
        "required": ["name", "arguments"],
    },
}
ANSWERS = {
    "person": {"name": "Ada Lovelace", "age": 36, "email": "ada@example.com", "tags": ["math"]},
    "tool_call": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}},
}
TREE_NODES = 16


def tokenizers() -> dict[str, object]:
    from transformers import AutoTokenizer

    from tokentree.files import cache_dir

    root = cache_dir() / "tokenizers"
    found = {}
    for name, folder in (("qwen2.5 (151k)", "qwen2.5-coder-1.5b-instruct-q4_k_m"),):
        if (root / folder).exists():
            found[name] = AutoTokenizer.from_pretrained(root / folder)
    for path in root.glob("SmolLM2*"):
        found["smollm2 (49k)"] = AutoTokenizer.from_pretrained(path)
    return found


class LLGuidance:
    name = "llguidance 1.9"

    def prepare(self, tokenizer, vocab: int):
        import llguidance.hf

        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
        self.words = (vocab + 31) // 32

    def compile(self, schema: dict):
        """A ready matcher's factory (llguidance compiles when a matcher is made: the first one
        is timed here, later ones are copies)."""
        import llguidance

        from tokentree.constraints.spec import JSON_STYLE

        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults=JSON_STYLE
        )
        first = llguidance.LLMatcher(self.tokenizer, grammar)
        return first.deep_copy

    def mask(self, matcher) -> None:
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(matcher, torch.zeros((1, self.words), dtype=torch.int32), 0)

    def consume(self, matcher, token: int) -> None:
        assert matcher.consume_token(token), matcher.get_error()

    def rollback(self, matcher, n: int) -> None:
        matcher.rollback(n)


class XGrammar:
    name = "xgrammar 0.2"

    def prepare(self, tokenizer, vocab: int):
        import xgrammar

        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self.bitmask = xgrammar.allocate_token_bitmask(1, vocab)

    def compile(self, schema: dict):
        """A ready matcher's factory (a fresh compiler each time: its cache would hide the
        compilation)."""
        import xgrammar

        compiler = xgrammar.GrammarCompiler(self.info, cache_enabled=False)
        compiled = compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(", ", ": ")
        )
        return lambda: xgrammar.GrammarMatcher(compiled, max_rollback_tokens=64)

    def mask(self, matcher) -> None:
        matcher.fill_next_token_bitmask(self.bitmask)

    def consume(self, matcher, token: int) -> None:
        assert matcher.accept_token(token)

    def rollback(self, matcher, n: int) -> None:
        matcher.rollback(n)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(engine, tokenizer, vocab: int, schema_name: str) -> dict:
    schema, answer = SCHEMAS[schema_name], ANSWERS[schema_name]
    tokens = tokenizer(json.dumps(answer)).input_ids
    new_matcher = None

    def compile_():
        nonlocal new_matcher
        new_matcher = engine.compile(schema)

    compile_s = timed(compile_)
    matcher = new_matcher()
    masks = []
    for token in tokens:
        masks.append(timed(lambda: engine.mask(matcher)))
        engine.consume(matcher, token)
    walk = new_matcher()  # a chain of TREE_NODES along the answer: consume, mask, roll back
    chain = tokens[:TREE_NODES]

    def walk_tree():
        for token in chain:
            engine.mask(walk)
            engine.consume(walk, token)
        engine.rollback(walk, len(chain))

    walk_s = timed(walk_tree)
    masks.sort()
    return {
        "compile_ms": compile_s * 1e3,
        "mask_us_median": statistics.median(masks) * 1e6,
        "mask_us_p95": masks[int(0.95 * (len(masks) - 1))] * 1e6,
        "walk_ms": walk_s * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engines = [LLGuidance(), XGrammar()]
    rows = []
    for tok_name, tokenizer in tokenizers().items():
        vocab = max(len(tokenizer), tokenizer.vocab_size)
        prepared = {}
        for engine in engines:
            prepared[engine.name] = timed(lambda: engine.prepare(tokenizer, vocab)) * 1e3
        for schema_name in SCHEMAS:
            runs = {engine.name: [] for engine in engines}
            for _ in range(args.repeats):
                for engine in engines:  # interleaved
                    runs[engine.name].append(measure(engine, tokenizer, vocab, schema_name))
            for engine in engines:
                med = {
                    k: statistics.median(r[k] for r in runs[engine.name])
                    for k in runs[engine.name][0]
                }
                rows.append({"tokenizer": tok_name, "schema": schema_name, "engine": engine.name,
                             "prepare_ms": prepared[engine.name], **med})  # fmt: skip
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Grammar engines on our tokenizers (medians of interleaved repeats)",
        "",
        f"Answer masks: one per token of a valid answer; walk: {TREE_NODES} nodes consumed, "
        "masked and rolled back (one step's tree).",
        "",
        "| tokenizer | schema | engine | prepare ms | compile ms | mask us (median) | "
        "mask us (p95) | walk ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tokenizer']} | {r['schema']} | {r['engine']} | {r['prepare_ms']:.0f} | "
            f"{r['compile_ms']:.1f} | {r['mask_us_median']:.0f} | {r['mask_us_p95']:.0f} | "
            f"{r['walk_ms']:.2f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    write_run_json(out, args)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
