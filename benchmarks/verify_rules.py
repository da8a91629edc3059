"""Sampled decoding with block verification of chain drafts against the token-by-token rules.

Two numbers per (drafter, temperature):
- paired: at every step of a run both rules judge the same draft and the same target
  distributions (the block rule drives, the token rule is evaluated alongside with its own
  draws), so the mean accepted tokens per step of the two are compared on identical drafts;
- tokens/s of whole runs with each rule driving (the same prompts, runs interleaved).
Requests are unseeded-style (each draft's own rule, not the coupled Gumbel path a seed selects).

    python benchmarks/verify_rules.py --drafters pld,suffix,chain --temperatures 0.7,1.0 --prompts 10
"""

import argparse
import statistics
import time

import torch

import tokentree
from tokentree.bench.suites import load_suite
from tokentree.drafters.base import resolve_budget
from tokentree.engine import DecodeRequest, Engine
from tokentree.sampling import accept, accept_sampled, warp
from tokentree.stats import GenerationStats


class Paired:
    """The block rule (through :func:`accept`), with the token rule judged on the same draft."""

    def __init__(self) -> None:
        self.steps = self.chains = 0
        self.accepted = {"block": 0, "token": 0}
        self.shadow = torch.Generator().manual_seed(12345)

    def __call__(self, draft, logits, params, generator):
        chosen = accept(draft, logits, params, generator)
        token = accept_sampled(draft, warp(logits, params), self.shadow)
        self.steps += 1
        self.chains += any(draft.tree.chain_below[i] and draft.tree.children[i] for i in range(len(draft.tree)))
        self.accepted["block"] += chosen.accepted
        self.accepted["token"] += token.accepted
        return chosen


def token_only(draft, logits, params, generator):
    return accept_sampled(draft, warp(logits, params), generator)


def decode(gen, drafter, prompt, args, temperature, seed, rule) -> tuple[int, float]:
    request = DecodeRequest(max_new_tokens=args.max_new_tokens, temperature=temperature, seed=seed,
                            budget=resolve_budget(None, drafter))
    planner = gen.planner(drafter) if request.budget == "auto" else None
    engine = Engine(gen.backend, drafter, gen.target.eos_ids, rule=rule, planner=planner, couple_seeded=False)
    stats = GenerationStats()
    start = time.perf_counter()
    tokens = sum(len(step) for step in engine.run(prompt, request, stats))
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafters", default="pld,suffix,chain")
    parser.add_argument("--temperatures", default="0.7,1.0")
    parser.add_argument("--prompts", type=int, default=10, help="half HumanEval, half Spec-Bench (one per category)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    gen = tokentree.load(backend="llamacpp")
    gen.draft = tokentree.api.load_draft(None, gen.target)
    spec = {p.category: p for p in load_suite("spec-bench")}
    texts = [p.turns[0] for p in load_suite("humaneval")[: args.prompts // 2]]
    texts += [p.turns[0] for p in list(spec.values())[: args.prompts - len(texts)]]
    prompts = [gen.encode(t) for t in texts]
    print("| drafter | T | steps | drafts with a chain | accepted/step block | accepted/step token | gain "
          "| tokens/s block | tokens/s token | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.drafters.split(","):
        for temperature in map(float, args.temperatures.split(",")):
            drafter = tokentree.drafters.make_drafter(name, gen.draft.model)
            paired, rates = Paired(), {"block": [], "token": []}
            for i, prompt in enumerate(prompts):
                order = [("block", paired), ("token", token_only)]
                for label, rule in order if i % 2 == 0 else order[::-1]:
                    tokens, seconds = decode(gen, drafter, prompt, args, temperature, 1000 + i, rule)
                    rates[label].append(tokens / seconds)
            block = 1 + paired.accepted["block"] / paired.steps  # tokens per step, the bonus included
            token = 1 + paired.accepted["token"] / paired.steps
            fast, slow = statistics.median(rates["block"]), statistics.median(rates["token"])
            print(f"| {name} | {temperature} | {paired.steps} | {paired.chains / paired.steps:.0%} | {block:.3f} | "
                  f"{token:.3f} | {block / token - 1:+.1%} | {fast:.2f} | {slow:.2f} | {fast / slow:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
