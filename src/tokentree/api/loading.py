"""``tokentree.load(...)``: a target (and a draft model) on the backend that suits them, and a
:class:`~tokentree.api.generator.Generator` over it."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backends.base import StaticConfig
from ..backends.llamacpp import LLAMA_CPP_PIN, LlamaCppConfig
from ..backends.openvino import OpenVINOConfig
from ..drafters import DRAFTERS, drafter_config, make_drafter
from ..drafters.state import require_stateful
from ..engine_choice import choice_key, choose_engine
from ..errors import TokentreeError
from ..models import (
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
from ..request import Request
from .generator import Generator, draft_source

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

    ``budget``: the tree size of requests that give none (None = decided per request, see
    :func:`tokentree.request.decide_budget`; "auto" = planned each step from the measured verify
    cost and the observed acceptance). ``drafter_state``: learned drafter state to start from.
    ``draft`` (a model spec) is loaded and checked against the target's vocabulary; draft-model
    drafters load the embedded 0.5B draft for the embedded target when none is given.
    ``backend``: "hf" (transformers; ``dtype``, ``device``), "llamacpp" (GGUF through llama.cpp;
    ``threads``, ``n_ctx``), "openvino" (exported once with ``ov_weights`` int4/int8/f16/f32,
    computed in ``ov_compute`` auto/f32) or "auto" (llama.cpp, when installed, for a .gguf target
    and for the embedded default without a CUDA GPU; else hf). ``static_cache`` (hf): a KV cache
    of that many positions allocated once, trees padded to power-of-two sizes; ``compile`` runs
    those forwards through ``torch.compile(mode="reduce-overhead")`` (CUDA graphs on a GPU).
    ``drafter_options`` are fields of the drafter's config (e.g. ``max_ngram=4`` for "pld").
    """
    drafter_config(drafter, **drafter_options)  # bad names and options fail before any loading
    static = StaticConfig(static_cache, compile) if static_cache else None
    if compile and static is None:
        raise TokentreeError("--compile needs --static-cache N (compiled forwards keep one shape)")
    Request(budget=budget)  # the default budget is checked like a request's
    needs_draft = DRAFTERS[drafter].needs_draft
    if needs_draft and draft is None and target is not None:
        raise TokentreeError(
            f"drafter '{drafter}' needs a draft model: give --draft (same vocabulary as the target)"
        )
    _say_why_not_llamacpp(backend, target, device)
    chosen_backend = resolve_backend(backend, target, device)
    if chosen_backend in ("llamacpp", "openvino"):
        options = CPUOptions(threads, n_ctx, ov_weights, ov_compute)
        target_model = _load_cpu_target(target, backend, chosen_backend, static, device, options)
    else:
        torch_device = resolve_device(device)
        target_model = load_model(
            target, EMBEDDED_TARGET, resolve_dtype(dtype, torch_device), torch_device
        )
        target_model.why = _why(backend, "hf")
    draft_model = load_draft(draft, target_model) if draft is not None or needs_draft else None
    return _generator(
        target_model, draft_model, drafter, drafter_options, budget, static, drafter_state
    )


def _generator(
    target: LoadedModel,
    draft: LoadedModel | None,
    drafter: str,
    drafter_options: dict,
    budget: int | str | None,
    static: StaticConfig | None,
    drafter_state: str | None,
) -> Generator:
    """The generator over loaded models, its drafter's learned state restored when the file
    exists."""
    drafter_obj = make_drafter(
        drafter, draft_source(draft, static), target.model, **drafter_options
    )
    if drafter_state is not None:
        require_stateful(drafter_obj)
    generator = Generator(target, drafter_obj, draft, budget, static)
    if drafter_state is not None and Path(drafter_state).exists():
        generator.load_drafter_state(drafter_state)
    return generator


def load_with_model_options(
    options: Any,
    drafter: str = "auto",
    draft: str | None = None,
    budget: int | str | None = None,
    drafter_state: str | None = None,
    **drafter_options: Any,
) -> Generator:
    """:func:`load` with the model options an object carries as attributes (the CLI's parsed
    model flags, the bench's config): target, dtype, device, backend, threads, n_ctx,
    static_cache, compile, ov_weights, ov_compute."""
    return load(
        options.target,
        draft,
        drafter,
        options.dtype,
        options.device,
        budget,
        drafter_state,
        backend=options.backend,
        threads=options.threads,
        n_ctx=options.n_ctx,
        static_cache=options.static_cache,
        compile=options.compile,
        ov_weights=options.ov_weights,
        ov_compute=options.ov_compute,
        **drafter_options,
    )


@dataclass(frozen=True)
class CPUOptions:
    """The llama.cpp and OpenVINO settings of :func:`load`."""

    threads: int | None
    n_ctx: int
    ov_weights: str
    ov_compute: str


def _load_cpu_target(
    target: str | None,
    asked: str,
    chosen: str,
    static: StaticConfig | None,
    device: str | None,
    options: CPUOptions,
) -> LoadedModel:
    """The target on llama.cpp or OpenVINO; for the embedded model under ``--backend auto`` with
    both installed, whichever engine is faster here (measured once, cached)."""
    if static is not None:
        raise TokentreeError("--static-cache and --compile need --backend hf")
    if device not in (None, "cpu"):
        raise TokentreeError(
            f"the {chosen} backend runs on the CPU; --device {device} needs --backend hf"
        )
    llama_config = LlamaCppConfig(threads=options.threads, n_ctx=options.n_ctx)
    ov_config = OpenVINOConfig(
        options.ov_weights, options.ov_compute, options.threads, options.n_ctx
    )
    loaders = {
        "llamacpp": lambda: load_llamacpp_model(target, EMBEDDED_TARGET, llama_config),
        "openvino": lambda: load_openvino_model(target, EMBEDDED_TARGET, ov_config),
    }
    if asked == "auto" and target is None and openvino_installed():
        # a GGUF file a user brings stays on llama.cpp, its own engine, without an export
        key = choice_key(EMBEDDED_TARGET.name, llama_config.thread_count, options.ov_weights)
        target_model, choice = choose_engine(key, loaders)
        target_model.why = f"--backend auto: {choice.reason}"
    else:
        target_model = loaders[chosen]()
        target_model.why = _why(asked, chosen)
    return target_model


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
