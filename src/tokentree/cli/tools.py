"""The tools beside generation: ``calibrate`` (Sequoia's acceptance vector), ``quantize`` (GGUF
formats where trees pay) and ``train-head`` (a feature head for ``--drafter eagle``)."""

from __future__ import annotations

import argparse

from ..errors import TokentreeError
from ..tools.calibrate import CalibrateConfig
from ..tools.train_head.train import TrainHeadConfig
from .flags import config_flags, config_from_args
from .model_flags import add_model_arguments, load_from_args


def add_calibrate(sub) -> None:
    calibrate = sub.add_parser(
        "calibrate", help="measure Sequoia's positional acceptance vector for a model pair"
    )
    add_model_arguments(calibrate)
    config_flags(calibrate.add_argument_group("calibration"), CalibrateConfig)
    calibrate.set_defaults(run=run_calibrate)


def add_quantize(sub) -> None:
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
    quant.set_defaults(run=run_quantize)


def add_train_head(sub) -> None:
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
    config_flags(head, TrainHeadConfig)
    head.set_defaults(run=run_train_head)


def run_calibrate(args: argparse.Namespace) -> int:
    from ..api import load_draft
    from ..tools.calibrate import calibrate

    config = config_from_args(CalibrateConfig, args)
    from ..api import resolve_backend
    from ..backends.llamacpp import is_gguf

    if args.backend == "llamacpp" or (args.target is not None and is_gguf(args.target)):
        raise TokentreeError(
            "calibrate runs on the hf backend (the vector it measures applies to both): give a "
            "transformers --target and --draft"
        )
    if resolve_backend(args.backend, args.target, args.device) == "llamacpp":
        args.backend = "hf"  # auto would pick llama.cpp for the embedded pair on a CPU
    gen = load_from_args(args, "pld")
    gen.draft = load_draft(args.draft, gen.target)
    vector = calibrate(gen, config)
    print("positional acceptance: " + ", ".join(f"{v:.3f}" for v in vector))
    print(
        f"saved to {config.out}; use it with --drafter sequoia --sequoia-calibration {config.out}"
    )
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from ..tools.quantize import QuantizeConfig, quantize

    config = config_from_args(QuantizeConfig, args)
    print(quantize(config))
    return 0


def run_train_head(args: argparse.Namespace) -> int:
    from ..tools.train_head.run import TrainHeadJob, run_train_head

    job = config_from_args(TrainHeadJob, args)
    try:
        config = config_from_args(TrainHeadConfig, args)
    except ValueError as exc:
        raise TokentreeError(f"train-head: {exc}") from exc
    run_train_head(job, config)
    return 0
