"""Sampled decoding with block verification of chain drafts against the token-by-token rules.

Two numbers per (drafter, temperature):
- paired: in a third, untimed run, at every step both rules judge the same draft and the same
  target distributions ``--draws`` times each (the block rule is :func:`accept_tree`), so their
  expected accepted tokens per step are compared on identical drafts, with little noise;
- tokens/s of whole runs with each rule driving (the same prompts, runs interleaved).
Requests are unseeded-style (each draft's own rule, not the coupled Gumbel path a seed selects).

    python benchmarks/verify_rules.py --drafters pld,suffix,chain --temperatures 0.7,1 --prompts 10
"""

import argparse
import statistics
import time

import torch

import tokentree
from tokentree.api import load_draft
from tokentree.bench.suites import load_suite
from tokentree.drafters import make_drafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.request import decide_budget
from tokentree.sampling import accept, accept_sampled, accept_tree, warp
from tokentree.stats import GenerationStats


class Paired:
    """Drives with the token rule and, at every step, estimates both rules' expected accepted tokens
    on that very draft and those target distributions (``draws`` evaluations of each, own draws)."""

    def __init__(self, draws: int) -> None:
        self.draws, self.steps, self.chains = draws, 0, 0
        self.accepted = {"block": 0.0, "token": 0.0}
        self.shadow = torch.Generator().manual_seed(12345)

    def __call__(self, draft, logits, params, generator):
        p = warp(logits, params)
        tree = draft.tree
        self.steps += 1
        if any(tree.chain_below[i] and tree.children[i] for i in range(len(tree))):
            self.chains += 1
            for label, rule in (("block", accept_tree), ("token", accept_sampled)):
                total = sum(rule(draft, p, self.shadow).accepted for _ in range(self.draws))
                self.accepted[label] += total / self.draws
        else:  # the two rules are the same here
            same = accept_sampled(draft, p, self.shadow).accepted
            self.accepted["block"] += same
            self.accepted["token"] += same
        return accept_sampled(draft, p, generator)


def token_only(draft, logits, params, generator):
    return accept_sampled(draft, warp(logits, params), generator)


def decode(gen, drafter, prompt, args, temperature, seed, rule) -> tuple[int, float]:
    request = DecodeRequest(
        max_new_tokens=args.max_new_tokens,
        temperature=temperature,
        seed=seed,
        budget=decide_budget(None, drafter, plans_every_tree=False),
    )
    planner = gen.planner(drafter) if request.budget == "auto" else None
    engine = Engine(
        gen.backend, drafter, gen.target.eos_ids, rule=rule, planner=planner, couple_seeded=False
    )
    stats = GenerationStats()
    start = time.perf_counter()
    tokens = sum(len(step) for step in engine.run(prompt, request, stats))
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drafters", default="pld,suffix,chain")
    parser.add_argument("--temperatures", default="0.7,1.0")
    parser.add_argument(
        "--prompts", type=int, default=10, help="half HumanEval, half Spec-Bench (one per category)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--draws", type=int, default=64, help="evaluations of each rule per step (paired estimate)"
    )
    args = parser.parse_args()
    gen = tokentree.load(backend="llamacpp")
    gen.draft = load_draft(None, gen.target)
    spec = {p.category: p for p in load_suite("spec-bench")}
    texts = [p.turns[0] for p in load_suite("humaneval")[: args.prompts // 2]]
    texts += [p.turns[0] for p in list(spec.values())[: args.prompts - len(texts)]]
    prompts = [gen.encode(t) for t in texts]
    print(
        "| drafter | T | paired steps | drafts with a chain | accepted/step block | accepted/step "
        "token | gain "
        "| tokens/s block | tokens/s token | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.drafters.split(","):
        for temperature in map(float, args.temperatures.split(",")):
            drafter = make_drafter(name, gen.draft.model)
            paired, rates = Paired(args.draws), {"block": [], "token": []}
            for i, prompt in enumerate(prompts):
                order = [("block", accept), ("token", token_only)]
                for label, rule in order if i % 2 == 0 else order[::-1]:
                    tokens, seconds = decode(
                        gen, drafter, prompt, args, temperature, 1000 + i, rule
                    )
                    rates[label].append(tokens / seconds)
                decode(gen, drafter, prompt, args, temperature, 2000 + i, paired)  # untimed
            block = (
                1 + paired.accepted["block"] / paired.steps
            )  # tokens per step, the bonus included
            token = 1 + paired.accepted["token"] / paired.steps
            fast, slow = statistics.median(rates["block"]), statistics.median(rates["token"])
            print(
                f"| {name} | {temperature} | {paired.steps} | {paired.chains / paired.steps:.0%} "
                f"| {block:.3f} | "
                f"{token:.3f} | {block / token - 1:+.1%} | {fast:.2f} | {slow:.2f} | "
                f"{fast / slow:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
