"""tokentree on each CPU engine against llama.cpp's own per-token speed, in one process.

Methods, on the same prompts (token ids encoded once), interleaved prompt by prompt with the order
rotated each run, greedy, learned drafter state carried from request to request as a server would:

- ``llama.cpp``: llama.cpp's plain decoding of the embedded Q4_K_M GGUF, llama_decode + argmax
  (:func:`tokentree.backends.llamacpp.plain_greedy`, flash attention on as in tokentree's context);
- ``tt:auto llama.cpp``: tokentree's default drafter on the llama.cpp backend;
- ``openvino int4``: plain decoding through OpenVINO (tokentree's loop, drafter none: one token per
  inference, what an OpenVINO user's plain decoding costs);
- ``tt:auto openvino int4`` / ``tt:auto openvino int8``: tokentree on the OpenVINO backend;
- with ``--genai VENV``: ``genai plain``, ``genai pld`` and ``genai draft``, OpenVINO GenAI's own
  decoding on optimum-intel's standard int4 export of the same weights (see genai_models.py).

Also the verify cost t(n) of both engines after 256, 1024 and 4096 cached tokens. Writes
results.md, records.jsonl and run.json (with the commit) to ``--out``:

    python benchmarks/engines.py --per-category 1 --runs 3 --out benchmarks/results/cpu-engines
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

import tokentree
from tokentree.backends import make_backend
from tokentree.backends.llama_plain import plain_greedy
from tokentree.bench.suites import load_suite, select
from tokentree.planner import measure_profile

TT_METHODS = {
    "tt:auto llama.cpp": dict(backend="llamacpp"),
    "openvino int4": dict(backend="openvino", ov_weights="int4", drafter="none"),
    "tt:auto openvino int4": dict(backend="openvino", ov_weights="int4"),
    "tt:auto openvino int8": dict(backend="openvino", ov_weights="int8"),
}
BASELINE = "llama.cpp"
GENAI_MODES = ("plain", "pld", "draft")


def machine() -> str:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.machine()


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="benchmarks/prompts/mixed12.jsonl")
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--contexts", default="256,1024,4096")
    parser.add_argument("--sizes", default="1,4,16")
    parser.add_argument("--methods", default=",".join([BASELINE, *TT_METHODS]))
    parser.add_argument("--genai", default=None, help="optimum-intel's venv: add GenAI's modes")
    parser.add_argument(
        "--records", default=None, help="a records.jsonl of an earlier run: only t(n) and report"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    load = dict(threads=2, n_ctx=8192)  # room for the longest profile context and its tree
    generators = {name: tokentree.load(**load, **TT_METHODS[name]) for name in methods[1:]}
    if args.genai:
        from genai_models import GenAIMethod, standard_models

        target, draft = standard_models(Path(args.genai))
        for mode in GENAI_MODES:
            generators[f"genai {mode}"] = GenAIMethod(mode, target, draft)
            methods.append(f"genai {mode}")
    base = tokentree.load(backend="llamacpp", drafter="none", **load)
    if args.records:
        records = [json.loads(line) for line in open(args.records)]
        methods = list(dict.fromkeys(r["method"] for r in records))
        report(out, records, verify_curves(base, generators, args), methods, args)
        return
    prompts = select(load_suite(prompts_file=args.prompts), None, args.per_category)
    ids = {p.id: base.encode(p.turns[0]) for p in prompts}
    warmup = base.encode("Say hello in three languages.")
    plain_greedy(base.target.model, warmup, 8)  # first calls compile kernels: not timed
    for name, gen in generators.items():
        if name.startswith("genai"):
            gen.generate(warmup, 8)
        else:
            gen.generate(warmup, max_new_tokens=8)
    records = []
    with open(out / "records.jsonl", "w") as log:
        for run in range(args.runs):
            for i, prompt in enumerate(prompts):
                order = methods[(i + run) % len(methods) :] + methods[: (i + run) % len(methods)]
                for name in order:
                    start = time.perf_counter()
                    if name == BASELINE:
                        tokens = plain_greedy(
                            base.target.model, ids[prompt.id], args.max_new_tokens
                        )
                        tau = None
                    elif name.startswith("genai"):
                        tokens = generators[name].generate(ids[prompt.id], args.max_new_tokens)
                        tau = None
                    else:
                        result = generators[name].generate(
                            ids[prompt.id], max_new_tokens=args.max_new_tokens
                        )
                        tokens, tau = result.token_ids, result.stats.tokens_per_step
                    wall = time.perf_counter() - start
                    record = dict(
                        run=run, prompt=prompt.id, category=prompt.category, method=name,
                        tokens=len(tokens), seconds=wall, tokens_per_s=len(tokens) / wall,
                        tau=tau, token_ids=tokens,
                    )  # fmt: skip
                    records.append(record)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    print(f"run {run} {prompt.id:12s} {name:24s} {len(tokens) / wall:6.2f} tok/s")
    curves = verify_curves(base, generators, args)
    report(out, records, curves, methods, args)


def verify_curves(base, generators, args) -> dict[str, list[tuple[int, list[float]]]]:
    """Each engine's t(n) (seconds) at each context."""
    sizes = tuple(int(n) for n in args.sizes.split(","))
    engines = {"llama.cpp": base}
    engines |= {n: g for n, g in generators.items() if n.startswith("tt:auto openvino")}
    curves = {}
    for name, gen in engines.items():
        backend = make_backend(gen.target.model)
        curves[name] = []
        for context in (int(c) for c in args.contexts.split(",") if c):
            profile = measure_profile(backend, sizes, context, repeats=3)
            curves[name].append((context, list(profile.seconds)))
            print(name, context, [round(s * 1000, 1) for s in profile.seconds])
        backend.reset()
    return curves


def report(out: Path, records, curves, methods, args) -> None:
    by = {}
    for r in records:
        by.setdefault((r["method"], r["prompt"], r["run"]), r)
    base_tps = {
        (r["prompt"], r["run"]): r["tokens_per_s"] for r in records if r["method"] == BASELINE
    }
    lines = [
        f"# CPU engines: tokentree vs llama.cpp's own decoding (commit {commit()})",
        "",
        f"Machine: {machine()}, {torch.get_num_threads()} "
        f"threads; {args.max_new_tokens} new tokens, greedy, runs {args.runs}; prompts "
        f"{args.prompts}. Ratio: tokens/s over llama.cpp's plain decoding of the same prompt in "
        "the same run; per category the median over prompts and runs, [min - max] in brackets.",
        "",
        "| method | "
        + " | ".join(sorted({r["category"] for r in records}))
        + " | all | slowest request |",
        "|---|" + "---|" * (len({r["category"] for r in records}) + 2),
    ]
    categories = sorted({r["category"] for r in records})
    for name in methods:
        cells, every = [], []
        for category in categories:
            ratios = [
                r["tokens_per_s"] / base_tps[(r["prompt"], r["run"])]
                for r in records
                if r["method"] == name and r["category"] == category
            ]
            every += ratios
            cells.append(f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]")
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {statistics.median(every):.2f}x | {min(every):.2f}x |"
        )
    lines += ["", "Tokens/s (median over prompts and runs):", ""]
    for name in methods:
        tps = [r["tokens_per_s"] for r in records if r["method"] == name]
        taus = [r["tau"] for r in records if r["method"] == name and r["tau"]]
        tau = f", tau {statistics.median(taus):.2f}" if taus else ""
        lines.append(f"- {name}: {statistics.median(tps):.2f} tokens/s{tau}")
    lines += ["", "Verify cost t(n) in ms (n = nodes, root included), by cached context:", ""]
    sizes = args.sizes.split(",")
    lines.append(
        "| engine | context | " + " | ".join(f"t({n})" for n in sizes) + f" | t({sizes[-1]})/t(1) |"
    )
    lines.append("|---|---|" + "---|" * (len(sizes) + 1))
    for name, rows in curves.items():
        for context, seconds in rows:
            cells = " | ".join(f"{s * 1000:.1f}" for s in seconds)
            lines.append(f"| {name} | {context} | {cells} | {seconds[-1] / seconds[0]:.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    run = dict(commit=commit(), command="python benchmarks/engines.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
    ), machine=machine(), date=time.strftime("%Y-%m-%d"))  # fmt: skip
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
