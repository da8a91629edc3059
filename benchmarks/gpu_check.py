"""The offline GPU check (issue 39): one short call on a lent GPU, nothing fetched.

Runs on the GPU machine's own image (torch, transformers 5.17; no gguf, fastapi or llama.cpp) with
the project's source on ``PYTHONPATH`` (no install), on models built from config at real shapes
with random weights (the Qwen2.5 1.5B and a Llama 8B shape, bf16; nothing to download):

- t(n)/t(1) for n = 1..128 through the growing cache, the static cache and the compiled static
  cache (CUDA graphs);
- the loop's own time per step (drafting, acceptance, bookkeeping) beside the verify's;
- tokens/s against HF ``generate`` with a replay drafter whose acceptance is controlled (it drafts
  the target's own greedy continuation, computed first, each token kept with a set probability),
  at tau 1.5 / 2.5 / 4 / 6, chains and trees, batch 1 and 8;
- the CUDA correctness tests (``tests/test_cuda.py``), in the same call;
- a projection of real speedups from the tau each drafter reached on each suite on a CPU (greedy
  tau does not depend on the device) and the measured speedup-against-tau curve: a projection,
  said so in the report.

Writes ``gpu_check.md``, ``gpu_check.json`` and ``gpu_check.png`` into ``--out`` (``$OUT`` there)
and prints a summary; every section is bounded by ``--budget-s``. On the GPU machine:

    bash benchmarks/gpu_check.sh                  # = PYTHONPATH=src python benchmarks/gpu_check.py

Dry run here (the test suite runs it, so it cannot rot):

    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import bisect
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tokentree.backends import make_backend, make_batch_target
from tokentree.backends.base import StaticConfig
from tokentree.batch import BatchEngine
from tokentree.engine import DecodeRequest, Engine
from tokentree.planner import measure_profile
from tokentree.sampling import Acceptance
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

SHAPES = {  # real shapes, random weights
    "qwen2-1.5b": dict(
        model_type="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "llama-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
}
TINY_SHAPES = {
    "tiny-qwen2": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )
}
TAUS = (1.5, 2.5, 4.0, 6.0)
DEPTH = 8  # replay chains are this deep; trees add a wrong sibling at every depth
# tau reached on a CPU (greedy; results committed in this repository): the projection's input
CPU_TAU = {
    "HumanEval-10, tt:auto (llama.cpp, cpu-humaneval10)": 4.08,
    "mixed traffic, tt:auto (llama.cpp, cpu-mixed14-e428381)": 1.55,
}


@dataclass
class Check:
    """The run's settings and what it found (the JSON report)."""

    device: str
    tiny: bool
    budget_s: float
    started: float = field(default_factory=time.monotonic)
    results: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def time_left(self, section: str) -> bool:
        """Whether ``section`` may start (the budget not spent); records it as skipped if not."""
        if time.monotonic() - self.started < self.budget_s:
            return True
        self.skipped.append(section)
        return False


class ReplayDrafter:
    """Drafts the target's own greedy continuation (computed first), each token kept with
    probability ``keep``: a replaced token (a wrong one) ends what can be accepted, so tau is
    set by ``keep``. ``width`` 2 adds a wrong sibling at every depth (a tree, not a chain)."""

    name, default_budget, runs_draft_model = "replay", DEPTH, False

    def __init__(self, answers: dict, vocab: int, keep: float, width: int = 1, seed: int = 0):
        self.answers, self.vocab, self.keep, self.width = answers, vocab, keep, width
        self.rng = random.Random(seed)

    def _wrong(self, token: int) -> int:
        return (token + 1 + self.rng.randrange(self.vocab - 1)) % self.vocab

    def propose(self, context, budget: int) -> TokenTree:
        prompt = next((p for p in self.answers if tuple(context[: len(p)]) == p), None)
        if prompt is None or budget <= 0:
            return TokenTree.root(int(context[-1]))
        done = len(context) - len(prompt)
        truth = self.answers[prompt][done : done + min(DEPTH, budget)]
        chain = [t if self.rng.random() < self.keep else self._wrong(t) for t in truth]
        paths = [chain]
        if self.width > 1:
            paths += [chain[:d] + [self._wrong(chain[d])] for d in range(len(chain))]
        tree = TokenTree.from_paths(int(context[-1]), paths)
        return tree.subset(range(1, min(len(tree), budget + 1)))

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        pass

    def reset(self) -> None:
        pass

    def fork(self) -> ReplayDrafter:
        return self


def keep_for_tau(tau: float) -> float:
    """The keep probability s whose chains of DEPTH reach ``tau``: 1 + s + ... + s^DEPTH = tau."""
    low, high = 0.0, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (
            (mid, high) if sum(mid**i for i in range(1, DEPTH + 1)) + 1 < tau else (low, mid)
        )
    return (low + high) / 2


def build_model(shape: dict, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cost_curves(check: Check, model, sizes, context: int, modes) -> dict:
    """t(n)/t(1) per mode (growing, static, compiled), and t(1) in ms."""
    curves = {}
    for mode in modes:
        if not check.time_left(f"t(n) {mode}"):
            continue
        static = (
            None
            if mode == "growing"
            else StaticConfig(4 * max(sizes) + 2 * context, mode == "compiled")
        )
        backend = make_backend(model, static=static)
        fitted = sizes if static is None else static.fit_profile(sizes, context, (), sizes)[0]
        profile = measure_profile(backend, fitted, context, repeats=3)
        t1 = profile.seconds[0]
        curves[mode] = {
            "t1_ms": 1000 * t1,
            "ratio": {n: s / t1 for n, s in zip(profile.sizes, profile.seconds)},
        }
        del backend
    return curves


def prompts_for(vocab: int, batch: int, length: int) -> list[list[int]]:
    rng = random.Random(1)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(batch)]


def greedy_answers(model, prompts, tokens: int) -> dict:
    """Each prompt's greedy continuation through tokentree's own one-token steps."""
    engine = Engine(make_backend(model), ReplayDrafter({}, 2, 0.0))
    answers = {}
    for prompt in prompts:
        stats = GenerationStats()
        request = DecodeRequest(max_new_tokens=tokens + DEPTH, budget=0)
        answers[tuple(prompt)] = [t for step in engine.run(prompt, request, stats) for t in step]
    return answers


def hf_tokens_per_s(model, prompts, tokens: int, device: str) -> float:
    ids = torch.tensor(prompts, device=model.device)
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    sync(device)
    start = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    sync(device)
    return len(prompts) * tokens / (time.perf_counter() - start)


def tt_run(model, prompts, answers, keep: float, width: int, tokens: int, device: str) -> dict:
    """tokens/s, tau and the loop's time per step outside the verify, batch len(prompts)."""
    drafter = ReplayDrafter(answers, model.config.vocab_size, keep, width)
    budget = DEPTH * width
    request = DecodeRequest(max_new_tokens=tokens, budget=budget)
    all_stats = [GenerationStats() for _ in prompts]
    sync(device)
    start = time.perf_counter()
    if len(prompts) == 1:
        engine = Engine(make_backend(model), drafter)
        for _ in engine.run(prompts[0], request, all_stats[0]):
            pass
    else:
        batch = BatchEngine(make_batch_target(model, len(prompts)), drafter, frozenset())
        for prompt, stats in zip(prompts, all_stats):
            batch.add(prompt, request, stats)
        while batch.runs:
            batch.step()
    sync(device)
    wall = time.perf_counter() - start
    first = all_stats[0]
    outside = first.total_s - first.prefill_s - first.verify_s
    return {
        "tokens_per_s": sum(s.new_tokens for s in all_stats) / wall,
        "tau": statistics.mean(s.tokens_per_step for s in all_stats),
        "loop_ms_per_step": 1000 * outside / max(1, first.steps),
        "verify_ms_per_step": 1000 * first.verify_s / max(1, first.steps),
    }


def replay_speedups(check: Check, model, device: str, tokens: int, batches) -> list[dict]:
    rows = []
    vocab = model.config.vocab_size
    for batch in batches:
        prompts = prompts_for(vocab, batch, 64)
        if not check.time_left(f"replay batch {batch}"):
            continue
        answers = greedy_answers(model, prompts, tokens)
        hf = hf_tokens_per_s(model, prompts, tokens, device)
        plain = tt_run(model, prompts, answers, 0.0, 1, tokens, device) | {"target_tau": 1.0}
        rows.append(
            {"batch": batch, "shape": "plain", **plain, "vs_hf": plain["tokens_per_s"] / hf}
        )
        for tau in TAUS:
            for width, shape in ((1, "chain"), (2, "tree")):
                if not check.time_left(f"replay batch {batch} tau {tau} {shape}"):
                    continue
                run = tt_run(model, prompts, answers, keep_for_tau(tau), width, tokens, device)
                rows.append(
                    {"batch": batch, "shape": shape, "target_tau": tau, **run}
                    | {"vs_hf": run["tokens_per_s"] / hf, "hf_tokens_per_s": hf}
                )
    return rows


def projection(rows: list[dict]) -> dict:
    """Speedup against HF generate at each suite's CPU tau, interpolated on the measured
    chain/batch-1 curve (tau -> vs_hf): a projection, not a measurement."""
    curve = sorted((r["tau"], r["vs_hf"]) for r in rows if r["batch"] == 1 and r["shape"] != "tree")
    if len(curve) < 2:
        return {}
    taus = [t for t, _ in curve]
    out = {}
    for suite, tau in CPU_TAU.items():
        i = min(max(bisect.bisect_left(taus, tau), 1), len(curve) - 1)
        (t0, v0), (t1, v1) = curve[i - 1], curve[i]
        out[suite] = {"cpu_tau": tau, "projected_vs_hf": v0 + (v1 - v0) * (tau - t0) / (t1 - t0)}
    return out


def cuda_tests(check: Check, timeout: int) -> dict:
    if not check.time_left("tests/test_cuda.py"):
        return {}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout} s"}
    lines = (done.stdout or done.stderr).strip().splitlines()
    return {"returncode": done.returncode, "summary": lines[-1] if lines else ""}


def environment(device: str) -> dict:
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    info["commit"] = commit.stdout.strip() or "unknown (no git here)"
    return info


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# GPU check",
        "",
        f"{env.get('gpu', env['device'])}, torch {env['torch']}, transformers "
        f"{env['transformers']}, commit {env['commit']}; models from config, random weights, "
        f"{report['dtype']}.",
        "",
    ]
    for name, model in report["models"].items():
        lines += [
            f"## {name}",
            "",
            "| mode | t(1) ms | " + " | ".join(f"t({n})/t(1)" for n in report["sizes"]) + " |",
        ]
        lines.append("|---|---|" + "---|" * len(report["sizes"]))
        for mode, curve in model.get("curves", {}).items():
            cells = [f"{curve['ratio'].get(n, float('nan')):.2f}" for n in report["sizes"]]
            lines.append(f"| {mode} | {curve['t1_ms']:.2f} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| batch | shape | target tau | tau | tokens/s | vs HF generate | loop ms/step "
            "| verify ms/step |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in model.get("replay", []):
            lines.append(
                f"| {r['batch']} | {r['shape']} | {r['target_tau']} | {r['tau']:.2f} | "
                f"{r['tokens_per_s']:.1f} | {r['vs_hf']:.2f}x | {r['loop_ms_per_step']:.2f} | "
                f"{r['verify_ms_per_step']:.2f} |"
            )
        if model.get("projection"):
            lines += ["", "Projection (not a measurement: CPU tau on the measured curve):", ""]
            for suite, p in model["projection"].items():
                lines.append(
                    f"- {suite}: tau {p['cpu_tau']:.2f} -> ~{p['projected_vs_hf']:.2f}x HF generate"
                )
        lines.append("")
    tests = report.get("cuda_tests", {})
    lines += [f"CUDA tests: {tests.get('summary', 'not run')}", ""]
    if report["skipped"]:
        lines += ["Skipped (out of time): " + ", ".join(report["skipped"]), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cost, speed) = plt.subplots(1, 2, figsize=(11, 4))
    for name, model in report["models"].items():
        for mode, curve in model.get("curves", {}).items():
            sizes = sorted(curve["ratio"], key=int)
            cost.plot(
                [int(n) for n in sizes],
                [curve["ratio"][n] for n in sizes],
                "o-",
                label=f"{name} {mode}",
            )
        for batch in (1, 8):
            rows = [
                r for r in model.get("replay", []) if r["batch"] == batch and r["shape"] != "tree"
            ]
            if rows:
                speed.plot(
                    [r["tau"] for r in rows],
                    [r["vs_hf"] for r in rows],
                    "o-",
                    label=f"{name} batch {batch}",
                )
    cost.set(xscale="log", xlabel="tree nodes n", ylabel="t(n) / t(1)", title="verify cost")
    speed.axhline(1.0, color="gray", lw=1)
    speed.set(
        xlabel="tau (tokens per step)",
        ylabel="tokens/s vs HF generate",
        title="replay drafter, chains",
    )
    for axes in (cost, speed):
        axes.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the dry run)")
    parser.add_argument("--models", default=None, help="comma-separated shape names")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--modes", default="growing,static,compiled", help="caches timed")
    parser.add_argument("--no-cuda-tests", action="store_true")
    parser.add_argument("--commit", help="the commit measured (the GPU machine's copy has no .git)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (use --device cpu --tiny for the dry run)",
            file=sys.stderr,
        )
        return 2
    shapes = TINY_SHAPES if args.tiny else SHAPES
    names = args.models.split(",") if args.models else list(shapes)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    sizes = (1, 2, 4, 8) if args.tiny else (1, 2, 4, 8, 16, 32, 64, 128)
    tokens = min(args.tokens, 16) if args.tiny else args.tokens
    check = Check(args.device, args.tiny, args.budget_s)
    report = {
        "environment": environment(args.device),
        "dtype": str(dtype),
        "sizes": list(sizes),
        "models": {},
    }
    for name in names:
        if not check.time_left(f"model {name}"):
            continue
        model = build_model(shapes[name], args.device, dtype)
        entry = report["models"][name] = {
            "curves": cost_curves(
                check, model, sizes, 32 if args.tiny else 256, args.modes.split(",")
            )
        }
        entry["replay"] = replay_speedups(check, model, args.device, tokens, (1, 8))
        entry["projection"] = projection(entry["replay"])
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if not args.no_cuda_tests:
        report["cuda_tests"] = cuda_tests(check, timeout=150)
    report["skipped"] = check.skipped
    report["seconds"] = time.monotonic() - check.started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    env = report["environment"]
    run = {"commit": args.commit or env["commit"], "command": " ".join(["python3", *sys.argv])}
    run |= {"machine": env.get("gpu", env["device"]), "date": time.strftime("%Y-%m-%d")}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    plot(report, out / "gpu_check.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
