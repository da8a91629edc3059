"""Command line: ``tokentree generate ...``. No algorithm lives here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from .calibrate import CalibrateConfig
from .drafters import DRAFTERS
from .errors import TokentreeError
from .head.train import TrainHeadConfig
from .server.config import ServeConfig


def _flag(config_cls: type, field_name: str) -> str:
    prefix = config_cls.__name__.removesuffix("Config").lower()
    return f"--{prefix}-{field_name.replace('_', '-')}"


def _drafter_option_groups(parser: argparse.ArgumentParser) -> None:
    """One flag per field of every drafter config dataclass, e.g. ``--pld-max-ngram``."""
    seen: set[type] = set()
    for name, spec in DRAFTERS.items():
        if spec.config_cls is None or spec.config_cls in seen:
            continue
        seen.add(spec.config_cls)
        users = ", ".join(n for n, s in DRAFTERS.items() if s.config_cls is spec.config_cls)
        group = parser.add_argument_group(f"options of drafter {users}")
        hints = typing.get_type_hints(spec.config_cls)
        for field in dataclasses.fields(spec.config_cls):
            kind = _boolean if hints[field.name] is bool else hints[field.name]
            group.add_argument(
                _flag(spec.config_cls, field.name),
                type=kind,
                default=None,
                metavar=field.name.upper(),
                help=f"default {field.default}",
            )


def _config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--field-name`` flag per field of ``config_cls`` (defaults and comments from the
    dataclass)."""
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        kind = hints[field.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=_boolean if kind is bool else kind,
            default=field.default,
            help=f"default {field.default}",
        )


def drafter_options(args: argparse.Namespace) -> dict[str, Any]:
    """The drafter options given on the command line, for the chosen drafter's config."""
    config_cls = DRAFTERS[args.drafter].config_cls if args.drafter in DRAFTERS else None
    options = {}
    for name, spec in DRAFTERS.items():
        if spec.config_cls is None:
            continue
        for field in dataclasses.fields(spec.config_cls):
            value = getattr(args, _flag(spec.config_cls, field.name)[2:].replace("-", "_"))
            if value is None:
                continue
            if spec.config_cls is not config_cls:
                raise TokentreeError(
                    f"{_flag(spec.config_cls, field.name)} does not apply to drafter "
                    f"'{args.drafter}'"
                )
            options[field.name] = value
    return options


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", help="HF model dir, hub id or .gguf file (default: embedded Qwen2.5-Coder-1.5B)"
    )
    parser.add_argument(
        "--draft", help="draft model (same forms as --target); must share the target's vocabulary"
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"]
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "hf", "llamacpp", "openvino"],
        help="hf (transformers), llamacpp (GGUF files through llama.cpp) or openvino (any "
        "supported model exported once to OpenVINO); auto = llamacpp, when llama-cpp-python is "
        "installed, for a .gguf --target and for the embedded default without a CUDA GPU; else hf",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="llama.cpp / openvino threads (default: all cores)",
    )
    parser.add_argument(
        "--n-ctx",
        type=int,
        default=4096,
        help="llama.cpp / openvino context size in tokens (default 4096)",
    )
    parser.add_argument(
        "--ov-weights",
        default="int4",
        choices=["int4", "int8", "f16", "f32"],
        help="openvino backend: weight format of the export (int4 symmetric in groups of 128, "
        "int8 per channel; default int4)",
    )
    parser.add_argument(
        "--ov-compute",
        default="auto",
        choices=["auto", "f32"],
        help="openvino backend: auto = OpenVINO's fastest precision on this CPU (bf16 where "
        "native), f32 = f32 arithmetic and cache (default auto)",
    )
    parser.add_argument(
        "--static-cache",
        type=int,
        default=0,
        metavar="N",
        help="hf backend: a KV cache of N positions allocated once (prompt + answer + one tree) "
        "and trees padded to power-of-two sizes, so every forward keeps its shape (default 0: a "
        "growing cache)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="with --static-cache: run tree forwards through torch.compile (reduce-overhead: one "
        "CUDA graph per tree size on a GPU; compiling takes a while per size)",
    )


def _load(
    args: argparse.Namespace,
    drafter: str = "auto",
    draft: str | None = None,
    budget=None,
    drafter_state: str | None = None,
    **options,
):
    """``tokentree.load`` with the model flags of ``add_model_arguments``."""
    from .api import load

    return load(
        args.target,
        draft,
        drafter,
        args.dtype,
        args.device,
        budget,
        drafter_state,
        backend=args.backend,
        threads=args.threads,
        n_ctx=args.n_ctx,
        static_cache=args.static_cache,
        compile=args.compile,
        ov_weights=args.ov_weights,
        ov_compute=args.ov_compute,
        **options,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokentree", description="Lossless token-tree speculative decoding"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text for one prompt, streamed to stdout")
    gen.add_argument("prompt", nargs="?", help="the prompt (read from stdin when omitted)")
    gen.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply the chat template (default: on when the tokenizer has one)",
    )
    add_model_arguments(gen)
    gen.add_argument(
        "--drafter",
        default="auto",
        help=f"one of: {', '.join(DRAFTERS)} (default auto: stand + pld "
        "merged, plus the --draft model when given, tree size planned per step)",
    )
    gen.add_argument(
        "--budget",
        type=_budget,
        default=None,
        help="drafted tokens per step, or 'auto' to size each step's tree from the measured verify "
        "cost and the observed acceptance (default: auto, except 16 for draft-model trees)",
    )
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 = greedy (default); > 0 samples losslessly",
    )
    gen.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1 = off)"
    )
    gen.add_argument(
        "--top-k",
        type=int,
        default=0,
        help="sample among the k most likely tokens (default 0 = off)",
    )
    gen.add_argument(
        "--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability"
    )
    gen.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument(
        "--drafter-state",
        metavar="PATH",
        help="learned drafter state (lookahead, recycling): loaded when it exists, saved after",
    )
    gen.add_argument(
        "--stats", action="store_true", help="print tau, tokens/s and step counts to stderr"
    )
    gen.add_argument(
        "--json", action="store_true", help="print one JSON object instead of streaming text"
    )
    _drafter_option_groups(gen)

    bench = sub.add_parser(
        "bench", help="compare HF baselines and tokentree drafters on a prompt suite"
    )
    bench.add_argument(
        "--suite",
        default="humaneval",
        help="spec-bench, humaneval, mt-bench, mixed (HumanEval and "
        "Spec-Bench interleaved by category, one process: a server's traffic) or agent (each "
        "HumanEval "
        "task as four turns that rework the earlier answer, ending in a JSON tool call) or long "
        "(RAG questions and articles to summarize among other documents, categories rag-4k .. "
        "summary-16k by size in tokens) (default humaneval)",
    )
    bench.add_argument("--prompts", help="a JSONL file in the Spec-Bench format instead of --suite")
    bench.add_argument(
        "--prompt-cache",
        action="store_true",
        help="a conversation's later turns reuse its cached "
        "prefix, as an agent's server would (llama.cpp backend only; default: every turn prefills)",
    )
    bench.add_argument(
        "--categories", type=_csv, default=None, help="comma-separated categories (default all)"
    )
    bench.add_argument("--limit", type=int, default=None, help="at most N prompts per category")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    bench.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling (default 1)"
    )
    bench.add_argument("--repeats", type=int, default=1)
    bench.add_argument(
        "--methods",
        type=_csv,
        default=None,
        help="comma-separated: hf, hf-assisted, hf-pld (hf backend), llama-decode (llama.cpp's own "
        "per-token decoding), llama, llama-pld (llama-cpp-python; llamacpp backend), "
        "tt:<drafter>[@budget] (default: the backend's plain and prompt-lookup baselines, "
        "tt:none, tt:pld)",
    )
    add_model_arguments(bench)
    bench.add_argument(
        "--out", default="bench-out", help="output directory (resumed when it exists)"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild summary, table and plots from the records in --out without running",
    )

    serve = sub.add_parser(
        "serve", help="an OpenAI-compatible HTTP server (chat and text completions, streaming)"
    )
    add_model_arguments(serve)
    serve.add_argument(
        "--drafter",
        default="auto",
        help=f"default drafter: one of {', '.join(DRAFTERS)} (default auto)",
    )
    serve.add_argument(
        "--budget",
        type=_budget,
        default=None,
        help="drafted tokens per step or 'auto' (default: auto, except 16 for draft-model trees)",
    )
    serve.add_argument(
        "--drafter-state",
        metavar="PATH",
        help="learned drafter state: loaded when it exists, saved on shutdown",
    )
    _config_flags(serve.add_argument_group("server"), ServeConfig)
    _drafter_option_groups(serve)

    calibrate = sub.add_parser(
        "calibrate", help="measure Sequoia's positional acceptance vector for a model pair"
    )
    add_model_arguments(calibrate)
    _config_flags(calibrate.add_argument_group("calibration"), CalibrateConfig)

    quant = sub.add_parser(
        "quantize",
        help="requantize a GGUF file with llama.cpp's quantizer (formats where trees "
        "pay: see tokentree profile)",
    )
    quant.add_argument(
        "input", help="a .gguf file, or 'embedded' / 'embedded-draft' for the shipped pair"
    )
    quant.add_argument("output", help="the .gguf file to write")
    quant.add_argument(
        "--type", default="q4_0", help="q4_0 (default), iq4_nl, q8_0, q4_k_m, ... (see the docs)"
    )
    quant.add_argument(
        "--threads", type=int, default=None, help="quantizer threads (default: all cores)"
    )
    quant.add_argument(
        "--allow-requantize",
        action="store_true",
        help="quantize an already quantized file (loses more quality than from F16/BF16)",
    )
    quant.add_argument("--overwrite", action="store_true", help="replace OUTPUT when it exists")
    quant.add_argument(
        "--output-type",
        default=None,
        help="the output layer's type (q4_0, q8_0, q6_k, ...; default: llama.cpp's choice for "
        "--type); a draft model reads it every token, so a smaller one drafts faster",
    )

    head = sub.add_parser(
        "train-head",
        help="train a feature head (--drafter eagle) for a transformers target on this machine",
    )
    head.add_argument("--target", help="HF model dir or hub id (default: the embedded target)")
    head.add_argument(
        "--dtype", default="bfloat16", choices=["auto", "float32", "bfloat16", "float16"]
    )
    head.add_argument(
        "--out", help="directory for the head (default: $TOKENTREE_CACHE/heads/<target>)"
    )
    head.add_argument(
        "--corpus", action="append", default=[], metavar="FILE", help="also train on this text"
    )
    head.add_argument(
        "--answers",
        type=int,
        default=0,
        help="training prompts the target answers first (their answers join the text)",
    )
    head.add_argument("--answer-tokens", type=int, default=128)
    head.add_argument(
        "--resume",
        action="store_true",
        help="continue the head in --out (features.pt in --out is reused either way)",
    )
    _config_flags(head, TrainHeadConfig)

    profile = sub.add_parser(
        "profile", help="measure the target's verify latency t(n) (used by --budget auto)"
    )
    add_model_arguments(profile)
    profile.add_argument("--plot", metavar="PNG", help="also save the curve as a PNG plot")
    profile.add_argument(
        "--compare",
        metavar="GGUF",
        action="append",
        default=[],
        help="also measure this GGUF file (repeatable; e.g. the target in other formats, see "
        "tokentree quantize), side by side",
    )
    profile.add_argument(
        "--chain", action="store_true", help="also measure single chains (trees are the default)"
    )
    profile.add_argument(
        "--long-contexts",
        type=_context_lengths,
        default=(),
        metavar="N,N,...",
        help="also measure after these many cached tokens (e.g. 4096,8192,16384): the planner "
        "then prices trees at the context a request has reached (default: 256 only)",
    )
    return parser


def _context_lengths(text: str) -> tuple[int, ...]:
    from .planner import PROFILE_CONTEXT

    try:
        lengths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, got '{text}'")
    if list(lengths) != sorted(set(lengths)) or lengths[0] <= PROFILE_CONTEXT:
        raise argparse.ArgumentTypeError(
            f"context lengths must be ascending and above {PROFILE_CONTEXT}, got '{text}'"
        )
    return lengths


def _boolean(text: str) -> bool:
    words = {
        "true": True,
        "yes": True,
        "1": True,
        "on": True,
        "false": False,
        "no": False,
        "0": False,
        "off": False,
    }
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")
    return words[text.lower()]


def _budget(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of tokens or 'auto', got '{text}'"
        ) from None


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _read_prompt(prompt: str | None) -> str:
    if prompt is not None:
        return prompt
    if sys.stdin.isatty():
        raise TokentreeError("no prompt: give PROMPT or pipe it on stdin")
    text = sys.stdin.read()
    if not text.strip():
        raise TokentreeError("the prompt read from stdin is empty")
    return text


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = _read_prompt(args.prompt)
    options = drafter_options(args)
    gen = _load(args, args.drafter, args.draft, args.budget, args.drafter_state, **options)
    stream = gen.stream(
        prompt,
        max_new_tokens=args.max_new_tokens,
        chat=args.chat,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        seed=args.seed,
        stop=args.stop,
    )
    for piece in stream:
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if args.json:
        print(
            json.dumps(
                {
                    "text": stream.text,
                    "token_ids": stream.token_ids,
                    "stats": stream.stats.to_dict(),
                }
            )
        )
    else:
        print()
    if args.drafter_state:
        gen.save_drafter_state(args.drafter_state)
    if args.stats:
        print(f"tokentree [{gen.drafter.name}]: {stream.stats.summary()}", file=sys.stderr)
        target = gen.target
        print(f"tokentree: {target.engine} ran the target ({target.why})", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import shlex

    from .bench.runner import BenchConfig, run_bench

    fields = {f.name for f in dataclasses.fields(BenchConfig)} - {"command"}
    config = BenchConfig(
        **{k: getattr(args, k) for k in fields},
        command="tokentree " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    run_bench(config)
    print((Path(config.out) / "results.md").read_text())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.run import serve
    from .server.state_keeper import prepare_state_file

    config = ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    if args.static_cache and config.max_batch > 1:
        raise TokentreeError("--static-cache decodes one sequence at a time: use --max-batch 1")
    if args.drafter_state:
        prepare_state_file(args.drafter_state)  # before minutes of loading: writable, no leftovers
    gen = _load(
        args, args.drafter, args.draft, args.budget, args.drafter_state, **drafter_options(args)
    )
    serve(gen, config, args.drafter_state)  # saves the state periodically and at shutdown
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .api import load_draft
    from .calibrate import calibrate

    config = CalibrateConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(CalibrateConfig)}
    )
    from .api import resolve_backend
    from .backends.llamacpp import is_gguf

    if args.backend == "llamacpp" or (args.target is not None and is_gguf(args.target)):
        raise TokentreeError(
            "calibrate runs on the hf backend (the vector it measures applies to both): give a "
            "transformers --target and --draft"
        )
    if resolve_backend(args.backend, args.target, args.device) == "llamacpp":
        args.backend = "hf"  # auto would pick llama.cpp for the embedded pair on a CPU
    gen = _load(args, "pld")
    gen.draft = load_draft(args.draft, gen.target)
    vector = calibrate(gen, config)
    print("positional acceptance: " + ", ".join(f"{v:.3f}" for v in vector))
    print(
        f"saved to {config.out}; use it with --drafter sequoia --sequoia-calibration {config.out}"
    )
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import QuantizeConfig, quantize

    config = QuantizeConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(QuantizeConfig)}
    )
    print(quantize(config))
    return 0


def cmd_train_head(args: argparse.Namespace) -> int:
    from .head.run import TrainHeadJob, run_train_head

    job = TrainHeadJob(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainHeadJob)})
    fields = dataclasses.fields(TrainHeadConfig)
    try:
        config = TrainHeadConfig(**{f.name: getattr(args, f.name) for f in fields})
    except ValueError as exc:
        raise TokentreeError(f"train-head: {exc}") from exc
    run_train_head(job, config)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .planner import measure_profile

    columns = []  # (label, profile)
    for index, target in enumerate([args.target] + list(args.compare)):
        if index:  # a --compare file: a GGUF on llama.cpp, the other flags as given
            args.target, args.backend = target, "llamacpp"
        gen = _load(args, "none")
        name = gen.target.source if target is None else Path(target).name
        print(
            f"measuring verify latency of {name} "
            f"({gen.target.precision}, {gen.target.device_name})",
            file=sys.stderr,
        )
        progress = lambda n, c, s: print(  # noqa: E731
            f"  context {c:<6d} n={n:<4d} {s * 1000:8.1f} ms", file=sys.stderr
        )
        profile = gen.cost_profile(refresh=True, progress=progress, longer=args.long_contexts)
        columns.append((name, profile))
        if args.chain:
            columns.append(
                (f"{name} (chains)", measure_profile(gen.backend, progress=progress, chain=True))
            )
    print(
        "t(n) / t(1): verify time of an n-node tree over one token's (context "
        f"{columns[0][1].context_len} tokens)"
    )
    print("| n | " + " | ".join(label for label, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    print("| t(1) ms | " + " | ".join(f"{p.seconds[0] * 1000:.1f}" for _, p in columns) + " |")
    for n in columns[0][1].sizes[1:]:
        print(f"| {n} | " + " | ".join(f"{p.ratio(n):.2f}" for _, p in columns) + " |")
    if columns[0][1].longer:
        _print_context_table(columns[0][1])
    if args.plot:
        from .planner_plot import plot_profile

        plot_profile(columns[0][1], args.plot)
    return 0


def _print_context_table(profile) -> None:
    """t(n) in ms at each measured context (the sizes measured at every one)."""
    curves = (profile, *profile.longer)
    print("\nt(n) ms by context (cached tokens)")
    print("| n | " + " | ".join(str(p.context_len) for p in curves) + " |")
    print("|---|" + "---|" * len(curves))
    for n in profile.longer[0].sizes:
        times = (p.seconds_at(n, p.context_len) for p in curves)
        print(f"| {n} | " + " | ".join(f"{t * 1000:.0f}" for t in times) + " |")


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        commands = {
            "generate": cmd_generate,
            "bench": cmd_bench,
            "serve": cmd_serve,
            "profile": cmd_profile,
            "calibrate": cmd_calibrate,
            "quantize": cmd_quantize,
            "train-head": cmd_train_head,
        }
        return commands[args.command](args)
    except TokentreeError as exc:
        print(f"tokentree: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tokentree: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
