"""Run methods over a suite, interleaved per prompt, appending one JSONL record per run
(resumable)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..api import Generator, load_draft, load_with_model_options, resolve_backend
from ..errors import TokentreeError
from ..sampling import SamplingParams
from .methods import Method, build_method, check_comparable, needs_draft, parse_method
from .report import checkout_commit, running_speedups, write_report
from .structured import require_jsonschema, structured_for
from .suites import BenchPrompt, load_suite, round_robin, select


@dataclass
class BenchConfig:
    """Options of ``tokentree bench`` (one field per flag)."""

    suite: str = "humaneval"
    prompts: str | None = None
    categories: list[str] | None = None
    limit: int | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    repeats: int = 1
    # None: the backend's plain and prompt-lookup baselines, tt:none, tt:pld
    methods: list[str] | None = None
    target: str | None = None
    draft: str | None = None
    dtype: str = "auto"
    device: str | None = None
    backend: str = "auto"
    threads: int | None = None
    n_ctx: int = 4096
    static_cache: int = 0  # hf backend: tokentree's forwards through a static cache (see load)
    compile: bool = False  # ... and compiled (CUDA graphs on a GPU)
    ov_weights: str = "int4"  # openvino backend: weight format of the export
    ov_compute: str = "auto"  # openvino backend: auto or f32
    out: str = "bench-out"
    seed: int = 0
    report_only: bool = False
    # a conversation's later turns reuse its cached prefix (llama.cpp backend only)
    prompt_cache: bool = False
    command: str = ""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise TokentreeError(f"--limit must be >= 1, got {self.limit}")
        if self.repeats < 1:
            raise TokentreeError(f"--repeats must be >= 1, got {self.repeats}")
        if self.max_new_tokens < 1:
            raise TokentreeError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.methods is None and self.suite == "json" and self.prompts is None:
            llama = ["llama"] if self.baseline == "llama-decode" else []  # LlamaGrammar decoding
            self.methods = llama + ["tt:none", "tt:pld", "tt:auto"]
        if self.methods is None and self.backend == "openvino":  # no plain baseline of its own
            self.methods = ["tt:none", "tt:pld", "tt:auto"]  # (benchmarks/engines.py compares
            # it with llama.cpp's and OpenVINO GenAI's)
        if self.methods is None:
            pld = "hf-pld" if self.baseline == "hf" else "llama-pld"
            self.methods = [self.baseline, pld, "tt:none", "tt:pld"]
        for method in self.methods:
            parse_method(method)  # raises for an unknown method or a bad @budget
        self.sampling  # validates temperature and top_p
        baseline = self.baseline
        if self.prompt_cache and baseline != "llama":  # (llama-decode prefills every turn)
            raise TokentreeError(
                "--prompt-cache needs --backend llamacpp: transformers' generate keeps no cache "
                "between calls, so its baselines could not reuse one"
            )
        if baseline not in self.methods:
            self.methods = [baseline] + list(
                self.methods
            )  # the baseline every ratio is taken against

    @property
    def baseline(self) -> str:
        """Plain decoding of the backend under test: ``hf`` (transformers), ``llama-decode``
        (llama.cpp's own llama_decode + argmax per token) or, with ``prompt_cache``, ``llama``
        (llama-cpp-python, which reuses a cached prefix as tokentree then does)."""
        backend = resolve_backend(self.backend, self.target, self.device)
        if backend == "openvino" or (backend != "llamacpp" and self.suite == "json"):
            return "tt:none"  # tokentree's loop without drafts: OpenVINO has no plain decoding of
            # its own, and transformers' generate no grammar
        if backend != "llamacpp":
            return "hf"
        return "llama" if self.prompt_cache else "llama-decode"

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p)


def run_turns(
    method: Method, generator: Generator, prompt: BenchPrompt, config: BenchConfig
) -> dict:
    """All turns of one prompt with one method; each turn follows the method's own previous
    answer. A structured prompt's turns are decoded under its rule and checked (``valid``)."""
    structured = structured_for(prompt, generator.tokenizer)
    messages, turns = [], []
    for index, turn in enumerate(prompt.turns):
        messages.append({"role": "user", "content": turn})
        result = method.run(
            generator.encode(messages, tools=list(prompt.tools) or None),
            config.max_new_tokens,
            config.sampling,
            config.seed,
            keep_cache=config.prompt_cache and index > 0,
            structured=structured,
        )
        text = reply_text(generator, result.token_ids, structured is not None)
        messages.append({"role": "assistant", "content": text})
        checked = {"valid": structured.valid(text)} if structured else {}
        turns.append({"new_tokens": len(result.token_ids), **asdict(result), **checked})
    new_tokens = sum(t["new_tokens"] for t in turns)
    wall = sum(t["wall_s"] for t in turns)
    return {
        "new_tokens": new_tokens,
        "wall_s": wall,
        "tokens_per_s": new_tokens / wall if wall else 0.0,
        **decode_rate(turns),
        "turns": turns,
    }


def reply_text(generator: Generator, token_ids: list[int], structured: bool) -> str:
    """A reply's text for the conversation (special tokens dropped) or, structured, for checking
    (special tokens kept: Qwen's tool-call markers are special; a final EOS dropped)."""
    if not structured:
        return generator.tokenizer.decode(token_ids, skip_special_tokens=True)
    if token_ids and token_ids[-1] in generator.target.eos_ids:
        token_ids = token_ids[:-1]
    return generator.tokenizer.decode(token_ids)


def decode_rate(turns: list[dict]) -> dict:
    """{"decode_tokens_per_s": the tokens after each turn's first over the time after it} when
    every turn timed its first token and made more than one (long prompts: prefill aside)."""
    if not all(t.get("first_token_s") and t["new_tokens"] > 1 for t in turns):
        return {}
    later = sum(t["wall_s"] - t["first_token_s"] for t in turns)
    tokens = sum(t["new_tokens"] - 1 for t in turns)
    return {"decode_tokens_per_s": tokens / later} if later > 0 else {}


def read_records(path: Path) -> list[dict]:
    """Records of earlier runs; a torn last line (interrupted write) is dropped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def build_methods(generator: Generator, names: list[str], notes: list[str]) -> list[Method]:
    methods = []
    for name in names:
        try:
            methods.append(build_method(name, generator))
        except TokentreeError as exc:
            if not needs_draft(name):
                raise
            notes.append(f"skipped {name}: {exc}")
    check_comparable(methods)
    return methods


def load_generator(config: BenchConfig, notes: list[str]) -> Generator:
    """The target, plus a draft model when a method needs one (a missing default draft becomes a
    note)."""
    generator = load_with_model_options(config, "none")
    if config.draft is not None or any(needs_draft(m) for m in config.methods):
        try:
            generator.draft = load_draft(config.draft, generator.target)
        except TokentreeError as exc:
            if config.draft is not None:
                raise
            notes.append(f"no draft model ({exc})")
    return generator


# Settings that change what a record means; --limit, --categories, --methods and --repeats only
# choose which records exist, so a run may be resumed with more (or fewer) of them.
WARMUP_PROMPT = "Say hello in three languages."
RESUME_KEYS = (
    "suite",
    "prompts",
    "max_new_tokens",
    "temperature",
    "top_p",
    "target",
    "draft",
    "dtype",
    "seed",
    "backend",
    "threads",
    "prompt_cache",
    "static_cache",
    "compile",
    "ov_weights",
    "ov_compute",
)


def check_same_settings(path: Path, config: BenchConfig, dtype: str) -> None:
    """An output directory belongs to one set of settings; resuming with others would mix
    results."""
    settings = {k: getattr(config, k) for k in RESUME_KEYS}
    if path.exists():
        earlier = json.loads(path.read_text())
        defaults = {
            f.name: f.default for f in fields(BenchConfig)
        }  # keys older runs did not record
        changed = sorted(k for k in RESUME_KEYS if earlier.get(k, defaults[k]) != settings[k])
        if changed:
            raise TokentreeError(
                f"{path.parent} holds a run with other settings ({', '.join(changed)}); "
                "use another --out or the same settings to resume"
            )
    record = {**settings, "dtype_used": dtype, "commit": checkout_commit()}
    path.write_text(json.dumps(record, indent=2) + "\n")


def open_records(out: Path, config: BenchConfig, dtype: str) -> list[dict]:
    """Records already in ``out`` (created if missing), after checking the settings match."""
    out.mkdir(parents=True, exist_ok=True)
    check_same_settings(out / "run.json", config, dtype)
    path = out / "records.jsonl"
    records = read_records(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))  # drop a torn last line
    return records


def run_jobs(
    methods: list[Method],
    generator: Generator,
    prompts: list[BenchPrompt],
    config: BenchConfig,
    records: list[dict],
    sink,
) -> None:
    """Run every (prompt, repeat, method) not in ``records``, appending each record to ``sink`` and
    ``records``."""
    from tqdm import tqdm

    done = {(r["prompt_id"], r["method"], r["repeat"]) for r in records}
    jobs = [(i, p, r) for r in range(config.repeats) for i, p in enumerate(prompts)]
    todo = sum((p.id, m.name, r) not in done for _, p, r in jobs for m in methods)
    bar = tqdm(total=todo, desc="bench", file=sys.stderr)
    for index, prompt, repeat in jobs:
        shift = (index + repeat) % len(methods)  # rotate the order so drift hits every method alike
        for method in methods[shift:] + methods[:shift]:
            if (prompt.id, method.name, repeat) in done:
                continue
            record = {
                "prompt_id": prompt.id,
                "category": prompt.category,
                "method": method.name,
                "repeat": repeat,
                **run_turns(method, generator, prompt, config),
            }
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            records.append(record)
            bar.update(1)
            bar.set_postfix({k: f"{v:.2f}x" for k, v in running_speedups(records).items()})
    bar.close()


def run_bench(config: BenchConfig) -> dict:
    """Run (or resume) a benchmark; returns the summary written to ``<out>/summary.json``.

    With ``report_only`` nothing runs: the report is rebuilt from the records already in ``out``.
    """
    prompts = round_robin(
        select(load_suite(config.suite, config.prompts), config.categories, config.limit)
    )
    out = Path(config.out)
    if config.report_only:
        if not (out / "records.jsonl").exists():
            raise TokentreeError(f"--report-only: no records in {out}")
        return report(
            read_records(out / "records.jsonl"),
            prompts,
            config,
            config.methods,
            ["rebuilt from records"],
            json.loads((out / "run.json").read_text()).get("dtype_used", config.dtype),
        )
    notes: list[str] = []
    generator = load_generator(config, notes)
    methods = build_methods(generator, config.methods, notes)
    dtype = generator.target.precision
    records = open_records(out, config, dtype)
    if any(p.schema is not None or p.tools for p in prompts):
        require_jsonschema()
        generator.grammar.warm()  # llguidance's tokenizer and first mask: not in any timed turn
    warmup = generator.encode([{"role": "user", "content": WARMUP_PROMPT}])
    for method in methods:  # not timed; a prompt outside the suite, so drafters learn nothing of it
        method.run(warmup, 8, config.sampling, config.seed)
    with open(out / "records.jsonl", "a") as sink:
        run_jobs(methods, generator, prompts, config, records, sink)
    return report(records, prompts, config, [m.name for m in methods], notes, dtype)


def report(
    records: list[dict],
    prompts: list[BenchPrompt],
    config: BenchConfig,
    names: list[str],
    notes: list[str],
    dtype: str,
) -> dict:
    """Write the report over the records of the selected prompts, repeats and methods."""
    chosen = {(p.id, r) for p in prompts for r in range(config.repeats)}
    selected = [
        r for r in records if (r["prompt_id"], r["repeat"]) in chosen and r["method"] in names
    ]
    have = {(r["prompt_id"], r["method"], r["repeat"]) for r in selected}
    complete = sum(all((p, m, r) in have for m in names) for p, r in chosen)
    if complete < len(chosen):
        notes = notes + [f"partial run: {complete} of {len(chosen)} prompt runs have every method"]
    return write_report(selected, config, names, notes, Path(config.out), dtype)
