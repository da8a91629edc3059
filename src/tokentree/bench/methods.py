"""Methods the harness compares: HF transformers baselines and tokentree drafters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from transformers.generation.streamers import BaseStreamer

from ..api import Generator, draft_source
from ..backends.llama_plain import plain_greedy_tokens
from ..backends.llamacpp import LlamaCppModel, import_llama_cpp
from ..drafters import DRAFTERS, HybridConfig, HybridDrafter, make_drafter
from ..drafters.base import clear_caches
from ..errors import TokentreeError
from ..request import Request
from ..sampling import SamplingParams
from ..trace import StepTrace
from .structured import Structured


@dataclass
class RunResult:
    """One generation of one turn. Speculative counters are None for HF baselines."""

    token_ids: list[int]
    wall_s: float
    steps: int | None = None
    tokens_per_step: float | None = None
    accepted_hist: dict[str, int] = field(default_factory=dict)
    draft_s: float | None = None
    verify_s: float | None = None
    first_token_s: float | None = None  # prefill and the first token (time to first token)
    drafted_tokens: int | None = None
    estimated_speedup: float | None = None  # the run's own estimate against plain decoding
    # the step that accepted most (a StepTrace's dict with each node's text): the report draws it
    best_step: dict | None = None
    # constrained runs (the json suite): what the grammar did ({"pruned", "forced", "seconds"})
    grammar: dict | None = None


class Method(Protocol):
    name: str

    def run(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        sampling: SamplingParams,
        seed: int,
        keep_cache: bool = False,
        structured: Structured | None = None,
    ) -> RunResult:
        """One turn; ``keep_cache``: reuse the prefix cached by this method's previous turn (else
        every turn prefills its whole prompt); ``structured``: decode under that output rule."""
        ...


class HFMethod:
    """``model.generate`` with extra keyword arguments (assistant model, prompt lookup)."""

    def __init__(self, name: str, generator: Generator, **generate_kwargs):
        self.name = name
        self.model = generator.target.model
        self.eos = sorted(generator.target.eos_ids)
        self.pad = (
            generator.tokenizer.pad_token_id
            if generator.tokenizer.pad_token_id is not None
            else self.eos[0]
        )
        self.kwargs = generate_kwargs

    @torch.inference_mode()
    def run(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        sampling: SamplingParams,
        seed: int,
        keep_cache: bool = False,
        structured: Structured | None = None,
    ) -> RunResult:  # generate keeps no cache between calls: never reused
        if structured is not None:
            raise TokentreeError(
                f"{self.name} cannot decode under a constraint (transformers' generate has no "
                "grammar): tt:none is the plain constrained baseline on this backend"
            )
        ids = torch.tensor([prompt_ids], device=self.model.device)
        options = (
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            if sampling.greedy
            else dict(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                min_p=sampling.min_p or None,
            )
        )
        torch.manual_seed(seed)
        clock = FirstTokenClock()
        out = self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            streamer=clock,
            **options,
            **self.kwargs,
        )
        wall = time.perf_counter() - clock.start
        return RunResult(out[0, len(prompt_ids) :].tolist(), wall, first_token_s=clock.first_s)


class FirstTokenClock(BaseStreamer):
    """A ``generate`` streamer that notes when the first new token arrives (``put`` sees the
    prompt first, then the new tokens)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.calls = 0
        self.first_s: float | None = None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_s = time.perf_counter() - self.start

    def end(self) -> None:
        pass


class TokentreeMethod:
    """tokentree with one drafter; ``budget`` None keeps the drafter's default tree size."""

    def __init__(
        self, name: str, generator: Generator, drafter_name: str, budget: int | str | None = None
    ):
        self.name = name
        self.generator = generator
        self.budget = budget
        draft = draft_source(generator.draft, generator.static)  # a static cache too, if any
        if "+" in drafter_name:  # a hybrid of these sources, sized per step like auto
            sources = HybridConfig(sources=drafter_name.replace("+", ","))
            self.drafter = HybridDrafter(
                sources,
                lambda name: make_drafter(name, draft, generator.target.model),
                name=drafter_name,
                default_budget="auto",
            )
        else:
            self.drafter = make_drafter(drafter_name, draft, generator.target.model)
        model = generator.target.model
        self.settings = (
            llama_settings(model.path, model.ctx, model.config.flash_attn)
            if generator.target.is_llamacpp
            else {}
        )

    def run(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        sampling: SamplingParams,
        seed: int,
        keep_cache: bool = False,
        structured: Structured | None = None,
    ) -> RunResult:
        if not keep_cache:
            # no prompt-cache reuse: HF baselines prefill every prompt too
            self.generator.backend.reset()
            clear_caches(self.drafter)  # nor for a draft model
        start = time.perf_counter()
        request = Request(
            max_new_tokens,
            sampling.temperature,
            sampling.top_p,
            sampling.top_k,
            seed,
            sampling.min_p,
            self.budget,
            constraint=structured.constraint if structured else None,
        )
        best = BestStep()
        out = self.generator.generate(prompt_ids, request, drafter=self.drafter, on_step=best)
        wall = time.perf_counter() - start
        s = out.stats
        return RunResult(
            out.token_ids,
            wall,
            s.steps,
            s.tokens_per_step,
            {str(k): v for k, v in sorted(s.accepted_hist.items())},
            s.draft_s,
            s.verify_s,
            s.first_token_s or None,
            s.drafted_tokens,
            s.estimated_speedup,
            best.as_dict(self.generator.tokenizer.decode),
            s.grammar,
        )


class BestStep:
    """Keeps the step of a run that accepted the most drafted tokens (the larger tree on a tie)."""

    def __init__(self):
        self.trace: StepTrace | None = None

    def __call__(self, trace: StepTrace) -> None:
        if self.trace is None or (len(trace.accepted), trace.drafted) > (
            len(self.trace.accepted),
            self.trace.drafted,
        ):
            self.trace = trace

    def as_dict(self, decode) -> dict | None:
        if self.trace is None or self.trace.drafted == 0:
            return None
        texts = [decode([token]) for token in self.trace.tree.tokens]
        return self.trace.to_dict() | {"texts": texts, "bonus_text": decode([self.trace.bonus])}


class LlamaCppMethod:
    """llama-cpp-python's own greedy decoding (``Llama.generate``), optionally with its
    prompt-lookup draft."""

    def __init__(self, name: str, generator: Generator, prompt_lookup: int = 0):
        llama_cpp = import_llama_cpp()
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        model = generator.target.model
        draft = LlamaPromptLookupDecoding(num_pred_tokens=prompt_lookup) if prompt_lookup else None
        threads = model.config.thread_count
        self.name = name
        self.eos = generator.target.eos_ids
        self.llm = llama_cpp.Llama(
            str(model.path),
            n_ctx=model.config.n_ctx,
            n_batch=model.config.n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=model.config.flash_attn,
            draft_model=draft,
            verbose=False,
            logits_all=draft is not None,
        )  # its draft path writes scores past n_batch
        flash = self.llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.settings = llama_settings(model.path, self.llm.ctx, flash)

    def run(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        sampling: SamplingParams,
        seed: int,
        keep_cache: bool = False,
        structured: Structured | None = None,
    ) -> RunResult:
        if not sampling.greedy:
            raise TokentreeError(f"{self.name} runs greedy only")
        tokens: list[int] = []
        if not keep_cache:
            # no prompt-cache reuse (generate reuses the longest cached prefix otherwise)
            self.llm.reset()
        grammar = None
        if structured is not None:  # llama.cpp's own grammar sampler, on the GBNF of the rule
            from llama_cpp import LlamaGrammar

            grammar = LlamaGrammar.from_string(structured.gbnf(), verbose=False)
        start, first = time.perf_counter(), None
        for token in self.llm.generate(
            prompt_ids,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            temp=0.0,
            repeat_penalty=1.0,
            reset=True,
            grammar=grammar,
        ):
            first = first or time.perf_counter() - start
            tokens.append(int(token))
            if token in self.eos or len(tokens) >= max_new_tokens:
                break
        return RunResult(tokens, time.perf_counter() - start, first_token_s=first)


class LlamaDecodeMethod:
    """llama.cpp's own per-token speed: one ``llama_decode`` and an argmax per token, on a context
    of its own with tokentree's settings (flash attention, batch size, threads): the honest plain
    baseline (``llama`` goes through llama-cpp-python's slower Python sampling loop)."""

    def __init__(self, name: str, generator: Generator):
        target = generator.target.model
        self.name = name
        self.model = LlamaCppModel(target.path, target.config)
        self.grammar = generator.grammar  # a constrained turn's masks: llguidance, as tokentree's
        self.settings = llama_settings(target.path, self.model.ctx, target.config.flash_attn)

    def run(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        sampling: SamplingParams,
        seed: int,
        keep_cache: bool = False,
        structured: Structured | None = None,
    ) -> RunResult:  # every turn prefills its whole prompt
        if not sampling.greedy:
            raise TokentreeError(f"{self.name} runs greedy only")
        start, first, tokens = time.perf_counter(), None, []
        grammar = self.grammar.start(structured.constraint) if structured else None
        for token in plain_greedy_tokens(self.model, prompt_ids, max_new_tokens, grammar):
            first = first or time.perf_counter() - start
            tokens.append(token)
        counts = grammar.counts.to_dict() if grammar else None
        return RunResult(tokens, time.perf_counter() - start, first_token_s=first, grammar=counts)


def llama_settings(path, ctx, flash_attn: bool) -> dict:
    """What a llama.cpp context decodes with, read back from the context itself (not from what was
    asked for): the settings two timed methods must share to be compared."""
    lib = import_llama_cpp()
    return {
        "model": str(path),
        "n_ctx": int(lib.llama_n_ctx(ctx)),
        "n_batch": int(lib.llama_n_batch(ctx)),
        "n_ubatch": int(lib.llama_n_ubatch(ctx)),
        "threads": int(lib.llama_n_threads(ctx)),
        "threads_batch": int(lib.llama_n_threads_batch(ctx)),
        "flash_attn": bool(flash_attn),
    }


def check_comparable(methods: Sequence[Method]) -> None:
    """Refuse to time methods whose llama.cpp contexts differ (a baseline with other threads or
    batch sizes than tokentree's would skew every ratio)."""
    timed = [m for m in methods if getattr(m, "settings", None)]
    for method in timed[1:]:
        differ = {
            key: (timed[0].settings[key], method.settings[key])
            for key in timed[0].settings
            if timed[0].settings[key] != method.settings.get(key)
        }
        if differ:
            detail = ", ".join(f"{key} {a} vs {b}" for key, (a, b) in differ.items())
            raise TokentreeError(
                f"methods {timed[0].name} and {method.name} run llama.cpp with different "
                f"settings ({detail}): their times cannot be compared"
            )


HF_METHODS = ("hf", "hf-assisted", "hf-pld")
LLAMA_METHODS = ("llama", "llama-pld", "llama-decode")


def known_methods() -> list[str]:
    return (
        list(HF_METHODS)
        + list(LLAMA_METHODS)
        + [f"tt:{name}" for name in DRAFTERS]
        + ["tt:<a>+<b>..."]
    )


def parse_method(name: str) -> tuple[str, int | str | None]:
    """``(baseline or drafter name, budget)`` of a method name; TokentreeError when it is not one.

    Methods are ``hf``, ``hf-assisted``, ``hf-pld`` (transformers backend), ``llama-decode``,
    ``llama``, ``llama-pld`` (llama.cpp backend: its own llama_decode + argmax per token,
    llama-cpp-python's plain decoding and its prompt-lookup draft of 10 tokens)
    and ``tt:<drafter>[@<budget>]`` where the budget is a positive node count or ``auto`` (planned
    per step); without it the drafter's default applies. ``tt:<a>+<b>+...`` is the hybrid of those
    drafters (``tt:stand+pld`` is auto without a draft model).
    """
    if name in HF_METHODS or name in LLAMA_METHODS:
        return name, None
    drafter, at, budget = name.removeprefix("tt:").partition("@")
    sources = drafter.split("+")
    if name.startswith("tt:") and len(sources) > 1 and all(s in DRAFTERS for s in sources):
        try:
            HybridConfig(sources=",".join(sources))  # distinct, and none of hybrid, auto or none
        except ValueError as exc:
            raise TokentreeError(f"method '{name}': {exc}") from None
    elif not name.startswith("tt:") or drafter not in DRAFTERS:
        raise TokentreeError(
            f"unknown method '{name}': choose from {', '.join(known_methods())} "
            "(tt:<drafter>@<budget> fixes the tree size, e.g. tt:stand@8)"
        )
    if not at:
        return drafter, None
    if budget != "auto" and not (budget.isdigit() and int(budget) >= 1):
        raise TokentreeError(
            f"method '{name}': the budget after '@' must be a positive integer or 'auto'"
        )
    return drafter, budget if budget == "auto" else int(budget)


def needs_draft(name: str) -> bool:
    """Whether a (valid) method name needs a draft model."""
    base, _ = parse_method(name)
    return base == "hf-assisted" or (
        name.startswith("tt:") and any(DRAFTERS[s].needs_draft for s in base.split("+"))
    )


def build_method(name: str, generator: Generator) -> Method:
    """Build a method by name; raises TokentreeError for unknown names or a missing draft model."""
    base, budget = parse_method(name)
    engine = generator.target.engine
    if (base in HF_METHODS and engine != "transformers") or (
        base in LLAMA_METHODS and engine != "llama.cpp"
    ):
        raise TokentreeError(
            f"method '{name}' needs --backend {'llamacpp' if base in LLAMA_METHODS else 'hf'}"
        )
    if base == "llama-decode":
        return LlamaDecodeMethod(name, generator)
    if base in LLAMA_METHODS:
        return LlamaCppMethod(name, generator, prompt_lookup=10 if base == "llama-pld" else 0)
    if base == "hf":
        return HFMethod(name, generator)
    if base == "hf-pld":
        return HFMethod(name, generator, prompt_lookup_num_tokens=10)
    if base == "hf-assisted":
        if generator.draft is None:
            raise TokentreeError("hf-assisted needs a draft model")
        return HFMethod(name, generator, assistant_model=generator.draft.model)
    return TokentreeMethod(name, generator, base, budget)
