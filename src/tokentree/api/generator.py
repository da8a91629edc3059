"""The hub of the Python API: a :class:`Generator` holds a target (and a draft model), its drafters
and planners, and turns a prompt and a :class:`~tokentree.request.Request` into a generation."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

from ..backends import make_backend
from ..backends.base import StaticConfig, bucket
from ..chat import chat_ids
from ..constraints import TokenGrammar
from ..drafters import DRAFTERS, Drafter, make_drafter
from ..drafters.state import load_state, save_state, vocab_signature
from ..engine import Engine
from ..errors import TokentreeError
from ..models import LoadedModel
from ..planner import (
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
from ..request import Request, RequestError, decide_budget
from ..text import TextStream
from ..trace import StepTrace
from .stream import GenerationStream, Output

if TYPE_CHECKING:
    from .rollouts import Policy, RolloutTree
    from .session import BatchSession

Prompt = Union[str, Sequence[int], Sequence[dict]]


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
        """``budget``: the tree size of requests that do not give one (None: decided per request,
        see :func:`tokentree.request.decide_budget`). ``static``: verify through a preallocated
        cache with fixed forward shapes (and compiled forwards), for transformers targets (see
        ``backends/hf/static.py``)."""
        self.target = target
        self.draft = draft
        self.drafter = drafter
        self.budget = budget
        self.static = static
        self.backend = make_backend(target.model, static=static)
        # built once per name, so learning carries over from request to request
        self._drafters: dict[str, Drafter] = {drafter.name: drafter}
        # per drafter name: calibration carries across requests
        self._planners: dict[str, Planner] = {}
        self._profile: CostProfile | None = None
        # constrained requests start from it (its llguidance tokenizer is built on first use)
        self.grammar = TokenGrammar(target.tokenizer, self.backend.vocab_size, target.eos_ids)

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
                profile = self._measure_profile(key, progress, longer)
                save_profile(profile)
            self._profile = profile
        return self._profile

    def _measure_profile(self, key: str, progress, longer: Sequence[int]) -> CostProfile:
        sizes, context = PROFILE_SIZES, PROFILE_CONTEXT
        if self.static is not None:
            sizes, context, longer = self.static.fit_profile(
                sizes, context, longer, LONG_PROFILE_SIZES
            )
        steps = len(sizes) + len(longer) * len(LONG_PROFILE_SIZES)
        with _profile_bar(progress, steps, key) as tick:
            profile = measure_profile(
                self.backend, sizes, context, key=key, progress=tick, longer=longer
            )
        return profile if self.static is None else padded_profile(profile, bucket)

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

    def check(self, request: Request) -> None:
        """What a request needs of this generator (the request itself is valid by construction):
        RequestError before anything is queued or decoded."""
        if request.drafter and DRAFTERS[request.drafter].needs_draft and self.draft is None:
            raise RequestError(
                "drafter",
                f"drafter '{request.drafter}' needs a draft model: load one with --draft",
            )

    def prepare(
        self, request: Request, drafter: Drafter | None = None
    ) -> tuple[Drafter, Request, Planner | None]:
        """The drafter of ``request`` (``drafter`` overrides its name), the request with its budget
        decided (:func:`~tokentree.request.decide_budget`, knowing the backend) and the planner
        sizing its trees (when the budget is "auto")."""
        self.check(request)
        if drafter is None:
            drafter = self.drafter_named(request.drafter) if request.drafter else self.drafter
        requested = self.budget if request.budget is None else request.budget
        budget = decide_budget(requested, drafter, self.backend.plans_every_tree)
        planner = self.planner(drafter) if budget == "auto" else None
        return drafter, request.replace(budget=budget), planner

    def load_drafter_state(self, path: str | Path) -> None:
        """Restore the default drafter's learned state (tries, matrices) from ``path``."""
        load_state(self.drafter, path, self.vocab_signature, self.backend.vocab_size)

    def save_drafter_state(self, path: str | Path) -> None:
        """Save the default drafter's learned state to ``path`` (atomically)."""
        save_state(self.drafter, path, self.vocab_signature)

    def encode(
        self,
        prompt: Prompt,
        chat: bool | None = None,
        special_in_content: bool = False,
        tools: Sequence[dict] | None = None,
    ) -> list[int]:
        """Token ids for a prompt: a string, chat messages ([{"role", "content"}]) or token ids.
        Control tokens typed inside chat messages are text unless ``special_in_content``;
        ``tools`` (OpenAI function definitions) are rendered by the chat template."""
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
            return chat_ids(self.tokenizer, prompt, special_in_content, tools)
        if all(isinstance(t, int) and 0 <= t < self.backend.vocab_size for t in prompt):
            return prompt
        raise TokentreeError(
            "a prompt must be a string, a list of chat messages, or a list of valid token ids"
        )

    def stream(
        self,
        prompt: Prompt,
        request: Request | None = None,
        chat: bool | None = None,
        on_step: Callable[[StepTrace], None] | None = None,
        **changes: Any,
    ) -> GenerationStream:
        """Start a generation of ``request`` (keyword ``changes`` to its fields build one, e.g.
        ``max_new_tokens=64, temperature=0.7, seed=1, stop=["\\n\\n"], drafter="pld"``); iterate
        the result for text pieces.

        temperature 0 decodes greedily; above 0 the output follows the target's distribution after
        top-k, top-p and min-p (lossless speculative sampling); ``seed`` makes a run reproducible.
        ``drafter`` may also be a :class:`Drafter` object (used as it is, for this call).
        ``on_step`` sees each step's :class:`~tokentree.trace.StepTrace` (the verified tree, who
        drafted each node, the planner's cut, what was accepted).
        """
        drafter, request = request_and_drafter(request, changes)
        drafter, request, planner = self.prepare(request, drafter)
        engine = Engine(
            self.backend,
            drafter,
            self.target.eos_ids,
            planner=planner,
            on_step=on_step,
            grammar=self.grammar,
        )
        text = TextStream(self.tokenizer, list(request.stop))
        return GenerationStream(engine, self.encode(prompt, chat), request, text)

    def generate(
        self, prompt: Prompt, request: Request | None = None, chat: bool | None = None, **changes
    ) -> Output:
        """Generate to the end (same arguments as :meth:`stream`)."""
        return self.stream(prompt, request, chat, **changes).output()

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        request: Request | None = None,
        max_batch: int | None = None,
        chat: bool | None = None,
        n: int = 1,
        **changes: Any,
    ) -> list[Output]:
        """Generate ``request`` for every prompt, up to ``max_batch`` sequences in each target
        forward (default: all; on llama.cpp at most its context's sequences allow); a sequence
        waiting for a slot joins when one finishes. ``n`` samples per prompt (outputs prompt by
        prompt, its samples in order): they share the prompt's cache cells, and sample i is seeded
        ``seed + i`` (None: each its own random seed). Each output is what :meth:`generate` gives
        for its prompt and seed (see :mod:`tokentree.batch` on rounding)."""
        if isinstance(prompts, str) or not prompts:
            raise TokentreeError("generate_batch takes a non-empty list of prompts")
        if n < 1:
            raise TokentreeError(f"n must be >= 1, got {n}")
        drafter, request = request_and_drafter(request, changes)
        session = self.batch_session(max_batch or len(prompts) * n)
        encoded = [self.encode(prompt, chat) for prompt in prompts]
        jobs = [(ids, sample_request(request, i)) for ids in encoded for i in range(n)]
        return session.run_all(jobs, drafter)

    def rollouts(
        self,
        prompt: Prompt,
        policy: Policy,
        request: Request | None = None,
        chat: bool | None = None,
        **changes: Any,
    ) -> RolloutTree:
        """Sample a tree of trajectories of ``prompt`` (see :mod:`tokentree.api.rollouts`):
        ``Independent(n)`` or ``Segments(width, segment_tokens, depth, max_leaves)``; every token
        with its logprob. The request's seed (None: a fresh one) seeds each branch's own seed."""
        from .rollouts import Rollout

        drafter, request = request_and_drafter(request, changes)
        if drafter is not None:
            raise TokentreeError("rollouts use the generator's drafter (forked for each branch)")
        return Rollout(self, self.encode(prompt, chat), request, policy).run()

    def batch_session(self, max_batch: int) -> BatchSession:
        """A session decoding up to ``max_batch`` sequences per forward (on llama.cpp at most the
        context's sequence ids allow, less one); the generator's own cache is emptied (llama.cpp:
        the session uses every sequence id of the context)."""
        from .session import BatchSession

        if max_batch < 1:
            raise TokentreeError(f"max_batch must be >= 1, got {max_batch}")
        # measured now if need be: on llama.cpp it runs on the context the sequences share
        self.cost_profile()
        self.backend.reset()
        return BatchSession(self, max_batch)


def request_and_drafter(
    request: Request | None, changes: dict[str, Any]
) -> tuple[Drafter | None, Request]:
    """The request a call asks for (``request`` with keyword ``changes``), and a drafter object
    given as ``drafter=`` in place of a name (None otherwise)."""
    if request is not None and not isinstance(request, Request):
        raise TokentreeError(
            f"the second argument is a tokentree.Request, got {request!r}: give options by "
            "keyword (generate(prompt, max_new_tokens=64))"
        )
    drafter = changes.get("drafter")
    if drafter is not None and not isinstance(drafter, str):
        changes = {k: v for k, v in changes.items() if k != "drafter"}
        return drafter, Request.build(request, **changes)
    return None, Request.build(request, **changes)


def sample_request(request: Request, index: int) -> Request:
    """Sample ``index`` of ``n`` from one request: seeded ``seed + index`` (None stays None)."""
    if request.seed is None or index == 0:
        return request
    return request.replace(seed=request.seed + index)


def draft_source(draft: LoadedModel | None, static: StaticConfig | None) -> Any:
    """What a draft-model drafter runs: the draft's module (its default backend), or with a static
    cache a backend of its own over one (the draft's forwards keep their shapes too)."""
    if draft is None:
        return None
    if static is None or draft.is_llamacpp or draft.is_openvino:
        return draft.model
    return make_backend(draft.model, draft=True, static=static)


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
