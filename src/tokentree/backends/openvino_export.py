"""Convert a transformers causal LM into an OpenVINO model that verifies a token tree per call.

The graph is the model's own (traced from the transformers module, no forked modeling code); what
we add is its signature: instead of a 2-D padding mask from which the export would build a causal
mask, the model takes the 4-D additive ``tree_mask`` itself, so one inference scores a whole tree.

    inputs   input_ids     [1, m] int64     the new rows (prompt chunk, or a tree's nodes)
             position_ids  [1, m] int64     their positions (a tree node: context + depth)
             tree_mask     [1, 1, m, c + m] float32: 0 where a row may look (committed columns,
                           its ancestors and itself), a large negative elsewhere; c = the columns
                           the cache holds (committed and rejected alike)
             output_rows   [k] int64        the rows whose logits are wanted
    output   logits        [1, k, V] float32
    state    one key and one value cache per layer, [1, kv_heads, c, head_dim]: each inference
             appends its m rows (OpenVINO's stateful model; read and rewritten only to compact it)

Weights are compressed by NNCF (int4 symmetric in groups of 128, or int8 per channel). The result
is cached under ``<cache>/openvino/<key>`` where the key hashes the source's content fingerprint
and the export options; a cache whose files do not match its manifest is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TokentreeError, UnsupportedModelError
from .hf import kvcache

EXPORT_VERSION = 2  # bump when the exported signature changes: cached models are rebuilt
WEIGHT_FORMATS = ("int4", "int8", "f16", "f32")
FAMILIES = ("llama", "qwen2", "qwen3")  # one full-attention mask, RoPE positions (tested)
MODEL_FILE = "model.xml"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ExportOptions:
    """How a model is exported (``--ov-weights``)."""

    weights: str = "int4"  # int4 (symmetric, groups of 128), int8 (per channel), f16 or f32

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_FORMATS:
            raise TokentreeError(
                f"unknown --ov-weights '{self.weights}': choose {', '.join(WEIGHT_FORMATS)}"
            )


def check_family(config) -> None:
    """UnsupportedModelError unless the architecture takes one full-attention tree mask."""
    kind = getattr(config, "model_type", "?")
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kind not in FAMILIES or layer_types != {"full_attention"}:
        raise UnsupportedModelError(
            f"the openvino backend exports the {', '.join(FAMILIES)} families (one "
            f"full-attention mask); model type '{kind}' is not supported yet: use --backend hf "
            "or llamacpp"
        )


EXPORT_ATTENTION = "tokentree_openvino"


def export_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [1, H, m, D], key/value [1, KVH, c + m, D] -> ([1, m, H, D], None): SDPA with grouped
    heads expanded as unsqueeze -> expand -> reshape, the form OpenVINO's CPU plugin fuses with
    the stateful cache into one attention node (transformers' own ``[:, :, None]`` traces as
    slices that stop the fusion, and every step then copies the whole cache twice)."""
    groups = module.num_key_value_groups
    if groups > 1:
        batch, kv_heads, length, dim = key.shape
        shape = (batch, kv_heads * groups, length, dim)
        key = key.unsqueeze(2).expand(batch, kv_heads, groups, length, dim).reshape(shape)
        value = value.unsqueeze(2).expand(batch, kv_heads, groups, length, dim).reshape(shape)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.transpose(1, 2).contiguous(), None


class TreeStep(torch.nn.Module):
    """The model as a pure function of explicit caches, the form OpenVINO traces.

    forward(input_ids, position_ids, tree_mask, output_rows, *past) -> (logits, *present) where
    past/present alternate key and value per layer, [1, kv_heads, c, head_dim] and
    [1, kv_heads, c + m, head_dim].
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, tree_mask, output_rows, *past):
        cache = kvcache.filled_cache(self.model.config, past)
        out = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=tree_mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=output_rows,
        )
        present = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def source_fingerprint(model_dir: Path) -> str:
    """A content fingerprint of an HF model directory: its config, and for every weight file its
    name, size and the sha256 of its first and last MiB (cheap, yet changes with the content)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if not path.is_file():
            continue
        digest.update(path.name.encode() + str(path.stat().st_size).encode())
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
            if path.stat().st_size > 2 << 20:
                f.seek(-(1 << 20), 2)
                digest.update(f.read())
    return digest.hexdigest()


def export_key(model_dir: Path, options: ExportOptions) -> str:
    key = f"{source_fingerprint(model_dir)}|{options.weights}|v{EXPORT_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def cached_export(model_dir: Path, options: ExportOptions, cache: Path, name: str) -> Path:
    """The exported model's directory for ``model_dir`` (exported once; rebuilt if corrupt)."""
    out = cache / f"{name}-{options.weights}-{export_key(model_dir, options)}"
    if intact(out):
        return out
    shutil.rmtree(out, ignore_errors=True)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    export(model_dir, options, partial)
    partial.rename(out)
    return out


def intact(out: Path) -> bool:
    """True when ``out`` holds a finished export whose files have the sizes its manifest lists."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        return all((out / f).stat().st_size == size for f, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def export(model_dir: Path, options: ExportOptions, out: Path) -> None:
    """Trace ``model_dir``'s causal LM, make its caches OpenVINO state, compress its weights and
    save it (with its tokenizer and generation config) under ``out``; a progress bar on stderr."""
    import openvino as ov
    from tqdm import tqdm
    from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = AutoConfig.from_pretrained(model_dir)
    check_family(config.get_text_config())
    steps = ["load", "trace", "state", "compress", "save"]
    started = time.perf_counter()
    with tqdm(total=len(steps), desc="openvino export", file=sys.stderr) as bar:
        bar.set_postfix_str("loading the transformers model")
        AttentionInterface.register(EXPORT_ATTENTION, export_attention)
        AttentionMaskInterface.register(EXPORT_ATTENTION, sdpa_mask)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation=EXPORT_ATTENTION
        ).eval()
        bar.update()
        bar.set_postfix_str("tracing")
        ov_model = trace(model)
        del model
        bar.update()
        bar.set_postfix_str("cache -> state")
        make_stateful(ov_model)
        bar.update()
        bar.set_postfix_str(f"compressing weights to {options.weights}")
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's own bar writes to stdout
            ov_model = compress(ov_model, options.weights)
        bar.update()
        bar.set_postfix_str("saving")
        out.mkdir(parents=True)
        ov.save_model(ov_model, out / MODEL_FILE, compress_to_fp16=options.weights != "f32")
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
        config.save_pretrained(out)
        for extra in ("generation_config.json",):
            if (model_dir / extra).exists():
                shutil.copy(model_dir / extra, out / extra)
        bar.update()
    files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    seconds = round(time.perf_counter() - started, 1)
    manifest = {"source": str(model_dir), "weights": options.weights, "files": files}
    manifest |= {"export_version": EXPORT_VERSION, "seconds": seconds}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))


def trace(model: torch.nn.Module):
    """The OpenVINO model of :class:`TreeStep` over ``model``, with named inputs and outputs and
    every length dimension dynamic."""
    import openvino as ov

    config = model.config.get_text_config()
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    m, c = 3, 2
    past = [torch.zeros(1, heads, c, head_dim) for _ in range(2 * config.num_hidden_layers)]
    example = (
        torch.tensor([[1, 2, 3]]),
        torch.tensor([[2, 3, 3]]),
        torch.zeros(1, 1, m, c + m),
        torch.tensor([0, 1, 2]),
        *past,
    )
    names = ["input_ids", "position_ids", "tree_mask", "output_rows"]
    names += [f"past.{i // 2}.{'kv'[i % 2]}" for i in range(len(past))]
    shapes = [[1, -1], [1, -1], [1, 1, -1, -1], [-1]] + [[1, heads, -1, head_dim]] * len(past)
    types = [ov.Type.i64, ov.Type.i64, ov.Type.f32, ov.Type.i64] + [ov.Type.f32] * len(past)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about branches fixed for every shape
        ov_model = ov.convert_model(
            TreeStep(model),
            example_input=example,
            input=[(ov.PartialShape(s), t) for s, t in zip(shapes, types)],
        )
    for param, name in zip(ov_model.inputs, names):
        param.get_tensor().set_names({name})
    outputs = ["logits"] + [f"present.{i // 2}.{'kv'[i % 2]}" for i in range(len(past))]
    for result, name in zip(ov_model.outputs, outputs):
        result.get_tensor().set_names({name})
    return ov_model


def make_stateful(ov_model) -> None:
    """Turn each past/present cache pair into OpenVINO state (ReadValue/Assign), in place."""
    from openvino._offline_transformations import apply_make_stateful_transformation

    pairs = {
        p.get_any_name(): p.get_any_name().replace("past.", "present.")
        for p in ov_model.inputs
        if p.get_any_name().startswith("past.")
    }
    apply_make_stateful_transformation(ov_model, pairs)


def compress(ov_model, weights: str):
    """``ov_model`` with NNCF-compressed weights (int4 symmetric g128, int8 per channel); f16 and
    f32 leave it as it is (f16 is applied when saving)."""
    if weights in ("f16", "f32"):
        return ov_model
    try:
        import nncf
    except ImportError as exc:
        raise TokentreeError(
            "compressing weights needs nncf: pip install 'tokentree[openvino]'"
        ) from exc
    nncf.set_log_level(logging.ERROR)  # its tables and bars would go to stdout, under ours
    if weights == "int8":
        return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_SYM)
    return nncf.compress_weights(
        ov_model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=128, ratio=1.0
    )
