"""The Python API: ``tokentree.load(...)`` returns a :class:`Generator`."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch

from .backends import make_backend, make_batch_target
from .backends.base import StaticConfig, bucket
from .backends.llamacpp import LLAMA_CPP_PIN, LlamaCppConfig
from .backends.openvino import OpenVINOConfig
from .chat import chat_ids
from .drafters import DRAFTERS, Drafter, drafter_config, make_drafter
from .drafters.base import resolve_budget
from .drafters.state import load_state, require_stateful, save_state, vocab_signature
from .engine import DecodeRequest, Engine
from .engine_choice import choice_key, choose_engine
from .errors import TokentreeError
from .models import (
    EMBEDDED_DRAFT,
    EMBEDDED_TARGET,
    LoadedModel,
    check_same_vocab,
    load_llamacpp_model,
    load_model,
    load_openvino_model,
    resolve_device,
    resolve_dtype,
)
from .planner import (
    LONG_PROFILE_SIZES,
    PROFILE_CONTEXT,
    PROFILE_SIZES,
    CostProfile,
    Planner,
    load_profile,
    measure_profile,
    padded_profile,
    profile_key,
    profile_path,
    save_profile,
)
from .stats import GenerationStats
from .text import TextStream

Prompt = Union[str, Sequence[int], Sequence[dict]]


@dataclass
class Output:
    """A finished generation: the new text, the new token ids and the statistics."""

    text: str
    token_ids: list[int]
    stats: GenerationStats


class GenerationStream:
    """Iterate to receive text pieces; ``text``, ``token_ids`` and ``stats`` fill in as it runs."""

    def __init__(
        self, engine: Engine, prompt_ids: list[int], request: DecodeRequest, text: TextStream
    ):
        self.stats = GenerationStats()
        self.text_stream = text
        self.eos_ids = engine.eos_ids
        self.cancelled = False  # set from any thread: the run ends after the current step
        self._pieces = self._run(engine, prompt_ids, request)

    def _run(self, engine: Engine, prompt_ids: list[int], request: DecodeRequest) -> Iterator[str]:
        for tokens in engine.run(prompt_ids, request, self.stats):
            piece = self.text_stream.push(tokens)
            if piece:
                yield piece
            if self.text_stream.stopped or self.cancelled:
                return
        piece = self.text_stream.finish()
        if piece:
            yield piece

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    @property
    def text(self) -> str:
        return self.text_stream.text

    @property
    def token_ids(self) -> list[int]:
        return list(self.text_stream.token_ids)

    @property
    def finish_reason(self) -> str:
        """ "stop" after an EOS token or a stop string, else "length" (or "cancelled")."""
        if self.text_stream.stopped or (self.token_ids and self.token_ids[-1] in self.eos_ids):
            return "stop"
        return "cancelled" if self.cancelled else "length"

    def output(self) -> Output:
        """Run to the end and return the whole result."""
        for _ in self._pieces:
            pass
        return Output(self.text, self.token_ids, self.stats)


class Generator:
    """A target model (plus an optional draft model) and a default drafter."""

    def __init__(
        self,
        target: LoadedModel,
        drafter: Drafter,
        draft: LoadedModel | None = None,
        budget: int | str | None = None,
        static: StaticConfig | None = None,
    ):
        """``static``: verify through a preallocated cache with fixed forward shapes (and
        compiled forwards), for transformers targets (see ``backends/hf_static.py``)."""
        self.target = target
        self.draft = draft
        self.drafter = drafter
        self.budget = budget
        self.static = static
        self.backend = make_backend(target.model, static=static)
        self._drafters: dict[str, Drafter] = {
            drafter.name: drafter
        }  # built once per name: learning carries over
        self._planners: dict[
            str, Planner
        ] = {}  # per drafter name: calibration carries across requests
        self._profile: CostProfile | None = None

    @property
    def tokenizer(self):
        return self.target.tokenizer

    @cached_property
    def vocab_signature(self) -> str:
        return vocab_signature(self.tokenizer)

    def cost_profile(
        self, refresh: bool = False, progress=None, longer: Sequence[int] = ()
    ) -> CostProfile:
        """The target's verify-cost profile: cached per model, dtype, device, threads and torch
        version. ``refresh`` measures it again, with curves at the ``longer`` contexts too."""
        if self._profile is None or refresh:
            precision = self.target.precision
            if self.static is not None:  # padded buckets and a whole-cache mask cost otherwise
                precision += f"|static {self.static.slots}|compile {self.static.compile}"
            key = profile_key(self.target.source, precision, self.target.device_name)
            profile = None if refresh else load_profile(key)
            if profile is None:
                sizes, context = PROFILE_SIZES, PROFILE_CONTEXT
                if self.static is not None:
                    sizes, context, longer = self.static.fit_profile(
                        sizes, context, longer, LONG_PROFILE_SIZES
                    )
                with _profile_bar(
                    progress, len(sizes) + len(longer) * len(LONG_PROFILE_SIZES), key
                ) as tick:
                    profile = measure_profile(
                        self.backend, sizes, context, key=key, progress=tick, longer=longer
                    )
                if self.static is not None:
                    profile = padded_profile(profile, bucket)
                save_profile(profile)
            self._profile = profile
        return self._profile

    def planner(self, drafter: Drafter) -> Planner:
        """The planner sizing trees of the drafter named like ``drafter`` under
        ``budget="auto"``."""
        if drafter.name not in self._planners:
            self._planners[drafter.name] = Planner(self.cost_profile())
        return self._planners[drafter.name]

    def drafter_named(self, name: str) -> Drafter:
        """This generator's drafter ``name``, built on first use and kept, so what it learns carries
        from call to call (``generate(..., drafter="stand")`` twice uses one STAND table)."""
        if name not in self._drafters:
            self._drafters[name] = make_drafter(
                name, draft_source(self.draft, self.static), self.target.model
            )
        return self._drafters[name]

    def load_drafter_state(self, path: str | Path) -> None:
        """Restore the default drafter's learned state (tries, matrices) from ``path``."""
        load_state(self.drafter, path, self.vocab_signature, self.backend.vocab_size)

    def save_drafter_state(self, path: str | Path) -> None:
        """Save the default drafter's learned state to ``path`` (atomically)."""
        save_state(self.drafter, path, self.vocab_signature)

    def encode(
        self, prompt: Prompt, chat: bool | None = None, special_in_content: bool = False
    ) -> list[int]:
        """Token ids for a prompt: a string, chat messages ([{"role", "content"}]) or token ids.
        Control tokens typed inside chat messages are text unless ``special_in_content``."""
        has_template = getattr(self.tokenizer, "chat_template", None) is not None
        if isinstance(prompt, str):
            if chat and not has_template:
                raise TokentreeError("chat=True, but the target's tokenizer has no chat template")
            if chat is False or not has_template:
                return list(self.tokenizer(prompt).input_ids)
            prompt = [{"role": "user", "content": prompt}]
        prompt = list(prompt)
        if not prompt:
            raise TokentreeError("the prompt is empty")
        if all(isinstance(m, dict) for m in prompt):
            if not has_template:
                raise TokentreeError(
                    "chat messages need a chat template, and the target's tokenizer has none"
                )
            return chat_ids(self.tokenizer, prompt, special_in_content)
        if all(isinstance(t, int) and 0 <= t < self.backend.vocab_size for t in prompt):
            return prompt
        raise TokentreeError(
            "a prompt must be a string, a list of chat messages, or a list of valid token ids"
        )

    def stream(
        self,
        prompt: Prompt,
        max_new_tokens: int = 128,
        chat: bool | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        drafter: str | Drafter | None = None,
        budget: int | str | None = None,
        min_p: float = 0.0,
    ) -> GenerationStream:
        """Start a generation; iterate the result for text pieces.

        temperature 0 decodes greedily; above 0 the output follows the target's distribution after
        top-k, top-p and min-p (lossless speculative sampling); ``seed`` makes a run reproducible.
        """
        chosen = self._drafter(drafter)
        request, stops = self._request(
            chosen, max_new_tokens, temperature, top_p, top_k, seed, stop, budget, min_p
        )
        planner = self.planner(chosen) if request.budget == "auto" else None
        engine = Engine(self.backend, chosen, self.target.eos_ids, planner=planner)
        return GenerationStream(
            engine, self.encode(prompt, chat), request, TextStream(self.tokenizer, stops)
        )

    def generate(self, prompt: Prompt, **options: Any) -> Output:
        """Generate to the end (same options as :meth:`stream`)."""
        return self.stream(prompt, **options).output()

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        max_batch: int | None = None,
        chat: bool | None = None,
        drafter: str | Drafter | None = None,
        n: int = 1,
        seed: int | None = None,
        **options: Any,
    ) -> list[Output]:
        """Generate for every prompt, up to ``max_batch`` sequences in each target forward (default:
        all; on llama.cpp at most its context's sequences allow); a sequence waiting for a slot
        joins when one finishes. ``n`` samples per prompt (outputs prompt by prompt, its samples in
        order): they share the prompt's cache cells, and sample i is seeded ``seed + i`` (None: each
        its own random seed). ``options`` are those of :meth:`stream` and apply to every sequence;
        each output is what :meth:`generate` gives for its prompt and seed (see
        :mod:`tokentree.batch` on rounding)."""
        if isinstance(prompts, str) or not prompts:
            raise TokentreeError("generate_batch takes a non-empty list of prompts")
        if n < 1:
            raise TokentreeError(f"n must be >= 1, got {n}")
        session = self.batch_session(max_batch or len(prompts) * n)
        encoded = [self.encode(prompt, chat) for prompt in prompts]
        ids = [prompt for prompt in encoded for _ in range(n)]
        seeds = [None if seed is None else seed + i for _ in encoded for i in range(n)]
        slots: dict[int, int] = {}  # prompt index -> slot
        outputs: dict[int, Output] = {}
        waiting = list(range(len(ids)))[::-1]
        while waiting or session.busy:
            while waiting and session.free_slots:
                index = waiting.pop()
                slots[index] = session.add(
                    ids[index], drafter=drafter, seed=seeds[index], **options
                )
            session.step()
            for index, slot in list(slots.items()):
                if session.finished(slot):
                    outputs[index] = session.release(slot)
                    del slots[index]
        return [outputs[i] for i in range(len(ids))]

    def batch_session(self, max_batch: int) -> BatchSession:
        """A session decoding up to ``max_batch`` sequences per forward (on llama.cpp at most the
        context's sequence ids allow, less one); the generator's own cache is emptied (llama.cpp:
        the session uses every sequence id of the context)."""
        if max_batch < 1:
            raise TokentreeError(f"max_batch must be >= 1, got {max_batch}")
        # measured now if need be: on llama.cpp it runs on the context the sequences share
        self.cost_profile()
        self.backend.reset()
        return BatchSession(self, max_batch)

    def _request(
        self,
        drafter: Drafter,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
        stop: Sequence[str] | str | None,
        budget: int | str | None,
        min_p: float,
    ) -> tuple[DecodeRequest, list[str]]:
        """The validated request and stop strings of a call."""
        budget = resolve_budget(self.budget if budget is None else budget, drafter)
        request = DecodeRequest(
            max_new_tokens, temperature, top_p, top_k, seed, min_p=min_p, budget=budget
        )
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not s for s in stops):
            raise TokentreeError("stop strings must be non-empty")
        return request, stops

    def _drafter(self, drafter: str | Drafter | None) -> Drafter:
        if drafter is None:
            return self.drafter
        return self.drafter_named(drafter) if isinstance(drafter, str) else drafter


class BatchSession:
    """Sequences decoded together over the target (see :class:`tokentree.batch.BatchEngine`):
    :meth:`add` prompts between steps, :meth:`step`, read each slot's text as it grows, and
    :meth:`release` a finished slot for its :class:`Output`."""

    def __init__(self, generator: Generator, max_batch: int):
        from .batch import BatchEngine

        if generator.static is not None:
            raise TokentreeError(
                "--static-cache decodes one sequence at a time: leave it out for batches "
                "(--max-batch, n > 1)"
            )
        self.generator = generator
        self.engine = BatchEngine(
            make_batch_target(generator.target.model, max_batch),
            generator.drafter,
            generator.target.eos_ids,
        )
        self.texts: dict[int, TextStream] = {}
        self.stats: dict[int, GenerationStats] = {}
        self.reasons: dict[int, str] = {}  # finished slots: "stop", "length" or "cancelled"

    @property
    def free_slots(self) -> list[int]:
        return [slot for slot in self.engine.free_slots if slot not in self.texts]

    @property
    def busy(self) -> bool:
        """Some sequence is still being decoded."""
        return bool(self.engine.runs)

    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        """Whether such a sequence has room in the shared cache now."""
        return self.engine.fits(prompt_tokens, max_new_tokens)

    def add(
        self,
        prompt_ids: list[int],
        drafter: str | Drafter | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        budget: int | str | None = None,
        min_p: float = 0.0,
    ) -> int:
        """Start a sequence (prefilled now) with the options of :meth:`Generator.stream`; its
        slot."""
        gen = self.generator
        chosen = gen._drafter(drafter)
        request, stops = gen._request(
            chosen, max_new_tokens, temperature, top_p, top_k, seed, stop, budget, min_p
        )
        planner = gen.planner(chosen) if request.budget == "auto" else None
        stats = GenerationStats()
        slot = self.engine.add(prompt_ids, request, stats, drafter=chosen, planner=planner)
        self.texts[slot], self.stats[slot] = TextStream(gen.tokenizer, stops), stats
        return slot

    def step(self) -> dict[int, str]:
        """One forward for every running sequence; the new final text of each (finished ones
        too)."""
        pieces = {}
        for slot, tokens in self.engine.step().items():
            text = self.texts[slot]
            pieces[slot] = text.push(tokens)
            if text.stopped:
                self.engine.cancel(slot)
                self.reasons[slot] = "stop"
            elif slot not in self.engine.runs:  # EOS or length
                pieces[slot] += text.finish()
                eos = bool(text.token_ids) and text.token_ids[-1] in self.generator.target.eos_ids
                self.reasons[slot] = "stop" if eos else "length"
        return pieces

    def finished(self, slot: int) -> bool:
        return slot in self.reasons

    def cancel(self, slot: int) -> None:
        """Stop ``slot`` now (between steps); :meth:`release` it as usual."""
        if slot in self.texts and slot not in self.reasons:
            self.engine.cancel(slot)
            self.reasons[slot] = "cancelled"

    def finish_reason(self, slot: int) -> str:
        return self.reasons[slot]

    def release(self, slot: int) -> Output:
        """A finished (or cancelled) slot's output; the slot is free again."""
        self.cancel(slot)
        text, stats = self.texts.pop(slot), self.stats.pop(slot)
        self.reasons.pop(slot)
        return Output(text.text, list(text.token_ids), stats)


BACKENDS = ("auto", "hf", "llamacpp", "openvino")


def resolve_backend(name: str, target: str | None, device: str | None = None) -> str:
    """'auto' = llama.cpp for a .gguf target, and for the embedded default (a GGUF pair) on a
    machine without a CUDA GPU, when llama-cpp-python is installed; else transformers."""
    if name not in BACKENDS:
        raise TokentreeError(f"unknown backend '{name}': choose {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    if device not in (None, "cpu") or not llama_cpp_installed():
        return "hf"
    if target is None:
        return "hf" if device is None and torch.cuda.is_available() else "llamacpp"
    return "llamacpp" if str(target).endswith(".gguf") else "hf"


def _why(asked: str, chosen: str) -> str:
    if asked != "auto":
        return f"--backend {asked}"
    if chosen == "llamacpp":
        return "--backend auto: llama.cpp for GGUF models on a CPU"
    return "--backend auto: transformers (a CUDA GPU, a non-GGUF model, or no llama.cpp)"


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _say_why_not_llamacpp(backend: str, target: str | None, device: str | None) -> None:
    """The embedded default on a CPU without the llama.cpp extra: say once what it costs."""
    if (
        backend == "auto"
        and target is None
        and device in (None, "cpu")
        and not torch.cuda.is_available()
        and not llama_cpp_installed()
    ):
        print(
            "tokentree: llama-cpp-python is not installed, so the embedded model runs on "
            "transformers, about "
            "2.4x slower on a CPU; for the fast path: pip install 'tokentree[llamacpp]' "
            f"({LLAMA_CPP_PIN})",
            file=sys.stderr,
        )


def load(
    target: str | None = None,
    draft: str | None = None,
    drafter: str = "auto",
    dtype: str = "auto",
    device: str | None = None,
    budget: int | str | None = None,
    drafter_state: str | None = None,
    backend: str = "auto",
    threads: int | None = None,
    n_ctx: int = 4096,
    static_cache: int = 0,
    compile: bool = False,
    ov_weights: str = "int4",
    ov_compute: str = "auto",
    **drafter_options: Any,
) -> Generator:
    """Load a target (None = the embedded Qwen2.5-Coder-1.5B-Instruct) and build a Generator.

    ``budget`` fixes the drafted tokens per step (None = each drafter's default; "auto" = sized each
    step from the measured verify cost and the observed acceptance).
    ``drafter_state``: a file of learned drafter state to start from, when it exists.
    ``draft`` (a model spec) is loaded and checked against the target's vocabulary when given;
    draft-model drafters (chain, specinfer, rsd-c, rsd-s, sequoia, dyspec) load the embedded 0.5B
    draft when the target is the embedded one and no draft is given.
    ``backend``: "hf" (transformers; ``dtype``, ``device``), "llamacpp" (GGUF files through
    llama.cpp; ``threads``, ``n_ctx``; tree sizes default to "auto") or "auto" (llamacpp, when
    installed, for a .gguf target and for the embedded default on a machine without a CUDA GPU;
    else hf).
    "openvino" (the model exported once to OpenVINO with ``ov_weights`` int4/int8/f16/f32,
    computed in ``ov_compute`` auto/f32; ``threads``, ``n_ctx``; tree sizes default to "auto").
    ``static_cache`` (hf backend): verify through a KV cache of that many positions allocated once,
    each tree padded to a power-of-two size, so forwards keep their shapes; ``compile`` then runs
    them through ``torch.compile(mode="reduce-overhead")`` (CUDA graphs on a GPU).
    ``drafter_options`` are fields of the drafter's config (e.g. ``max_ngram=4`` for "pld").
    """
    drafter_config(drafter, **drafter_options)  # bad names and options fail before any loading
    static = StaticConfig(static_cache, compile) if static_cache else None
    if compile and static is None:
        raise TokentreeError("--compile needs --static-cache N (compiled forwards keep one shape)")
    needs_draft = DRAFTERS[drafter].needs_draft
    if needs_draft and draft is None and target is not None:
        raise TokentreeError(
            f"drafter '{drafter}' needs a draft model: give --draft (same vocabulary as the target)"
        )
    _say_why_not_llamacpp(backend, target, device)
    chosen_backend = resolve_backend(backend, target, device)
    if chosen_backend in ("llamacpp", "openvino"):
        if static is not None:
            raise TokentreeError("--static-cache and --compile need --backend hf")
        if device not in (None, "cpu"):
            raise TokentreeError(
                f"the {chosen_backend} backend runs on the CPU; --device {device} needs "
                "--backend hf"
            )
        llama_config = LlamaCppConfig(threads=threads, n_ctx=n_ctx)
        ov_config = OpenVINOConfig(ov_weights, ov_compute, threads, n_ctx)
        loaders = {
            "llamacpp": lambda: load_llamacpp_model(target, EMBEDDED_TARGET, llama_config),
            "openvino": lambda: load_openvino_model(target, EMBEDDED_TARGET, ov_config),
        }
        if backend == "auto" and target is None and openvino_installed():
            # the embedded model: whichever engine is faster here (a GGUF file a user brings
            # stays on llama.cpp, its own engine, without an export to compare)
            key = choice_key(EMBEDDED_TARGET.name, llama_config.thread_count, ov_weights)
            target_model, choice = choose_engine(key, loaders)
            target_model.why = f"--backend auto: {choice.reason}"
        else:
            target_model = loaders[chosen_backend]()
            target_model.why = _why(backend, chosen_backend)
        budget = "auto" if budget is None else budget  # CPU batch costs rise: plan every tree
    else:
        torch_device = resolve_device(device)
        target_model = load_model(
            target, EMBEDDED_TARGET, resolve_dtype(dtype, torch_device), torch_device
        )
        target_model.why = _why(backend, "hf")
    draft_model = load_draft(draft, target_model) if draft is not None or needs_draft else None
    drafter_obj = make_drafter(
        drafter, draft_source(draft_model, static), target_model.model, **drafter_options
    )
    if drafter_state is not None:
        require_stateful(drafter_obj)
    generator = Generator(target_model, drafter_obj, draft_model, budget, static)
    if drafter_state is not None and Path(drafter_state).exists():
        generator.load_drafter_state(drafter_state)
    return generator


@contextmanager
def _profile_bar(progress, total: int, key: str):
    """The callback measuring a profile reports to: ``progress`` when given, else a progress bar
    on stderr that says once what is measured and where it is kept."""
    if progress is not None:
        yield progress
        return
    from tqdm import tqdm

    print(
        f"tokentree: measuring the verify cost t(n) once (cached in {profile_path(key).parent})",
        file=sys.stderr,
    )
    with tqdm(total=total, unit="size", desc="verify profile", file=sys.stderr) as bar:
        yield lambda n, context, seconds: bar.update(1)


def draft_source(draft: LoadedModel | None, static: StaticConfig | None) -> Any:
    """What a draft-model drafter runs: the draft's module (its default backend), or with a static
    cache a backend of its own over one (the draft's forwards keep their shapes too)."""
    if draft is None:
        return None
    if static is None or draft.is_llamacpp or draft.is_openvino:
        return draft.model
    return make_backend(draft.model, draft=True, static=static)


def load_draft(spec: str | None, target: LoadedModel) -> LoadedModel:
    """Load a draft model (None = the embedded Qwen2.5-Coder-0.5B) like the target, checking its
    vocabulary."""
    if target.is_llamacpp:
        draft = load_llamacpp_model(spec, EMBEDDED_DRAFT, target.model.config)
    elif target.is_openvino:
        draft = load_openvino_model(spec, EMBEDDED_DRAFT, target.model.config)
    else:
        draft = load_model(spec, EMBEDDED_DRAFT, target.model.dtype, target.model.device)
    check_same_vocab(target, draft)
    return draft
