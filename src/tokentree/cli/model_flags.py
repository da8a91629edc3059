"""The flags that choose and load a model (every model command has them) and the load itself."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--target, --draft, --dtype, --device, --backend, and the engines' own flags."""
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
    _cpu_engine_arguments(parser)
    _static_arguments(parser)


def _cpu_engine_arguments(parser: argparse.ArgumentParser) -> None:
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


def _static_arguments(parser: argparse.ArgumentParser) -> None:
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


def load_from_args(
    args: argparse.Namespace,
    drafter: str = "auto",
    draft: str | None = None,
    budget=None,
    drafter_state: str | None = None,
    **options,
):
    """``tokentree.load`` with the model flags of :func:`add_model_arguments`."""
    from ..api import load_with_model_options

    return load_with_model_options(args, drafter, draft, budget, drafter_state, **options)
