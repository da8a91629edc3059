"""``tokentree quantize``: llama.cpp's own quantizer (through llama-cpp-python), with progress.

The format decides how much a token tree can pay on a CPU: llama.cpp repacks Q4_0 and IQ4_NL
weights at load time into layouts whose batched kernels verify 4 tokens for about 2 one-token
steps, against 3 for Q4_K_M (see ``tokentree profile``).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..backends.llamacpp import import_llama_cpp, is_gguf
from ..errors import TokentreeError

# llama_ftype ids and approximate bits per weight (for the progress estimate only)
QUANT_TYPES: dict[str, tuple[int, float]] = {
    "q4_0": (2, 4.5),
    "q4_1": (3, 5.0),
    "q5_0": (8, 5.5),
    "q5_1": (9, 6.0),
    "q8_0": (7, 8.5),
    "q2_k": (10, 2.9),
    "q3_k_s": (11, 3.5),
    "q3_k_m": (12, 3.9),
    "q3_k_l": (13, 4.3),
    "q4_k_s": (14, 4.6),
    "q4_k_m": (15, 4.9),
    "q5_k_s": (16, 5.5),
    "q5_k_m": (17, 5.7),
    "q6_k": (18, 6.6),
    "iq4_nl": (25, 4.5),
    "iq4_xs": (30, 4.3),
    "f16": (1, 16.0),
    "bf16": (32, 16.0),
}
# ggml tensor type ids for the output layer (llama.cpp's --output-tensor-type)
OUTPUT_TYPES: dict[str, int] = {
    "f16": 1,
    "q4_0": 2,
    "q5_0": 6,
    "q8_0": 8,
    "q4_k": 12,
    "q5_k": 13,
    "q6_k": 14,
    "iq4_nl": 20,
}
UNQUANTIZED_FILE_TYPES = {0: "F32", 1: "F16", 32: "BF16"}  # GGUF general.file_type values
EMBEDDED_INPUTS = ("embedded", "embedded-draft")


@dataclass
class QuantizeConfig:
    """Options of ``tokentree quantize`` (one field per argument)."""

    input: str  # a .gguf file, or 'embedded' / 'embedded-draft' for the shipped pair
    output: str
    type: str = "q4_0"
    threads: int | None = None  # None = all cores
    # quantize an already quantized file (loses more than from F16/BF16)
    allow_requantize: bool = False
    overwrite: bool = False
    # the output layer's type; None = llama.cpp's choice for ``type``
    output_type: str | None = None

    def __post_init__(self) -> None:
        self.type = self.type.lower()
        if self.type not in QUANT_TYPES:
            raise TokentreeError(
                f"unknown quantization type '{self.type}': choose {', '.join(QUANT_TYPES)}"
            )
        if self.output_type is not None:
            self.output_type = self.output_type.lower()
            if self.output_type not in OUTPUT_TYPES:
                raise TokentreeError(
                    f"unknown output layer type '{self.output_type}': choose "
                    f"{', '.join(OUTPUT_TYPES)}"
                )
        if self.threads is not None and self.threads < 1:
            raise TokentreeError(f"--threads must be >= 1, got {self.threads}")


def input_path(spec: str) -> Path:
    """The GGUF file to read: a path, or the embedded target/draft assembled from its wheels."""
    if spec in EMBEDDED_INPUTS:
        from ..models import EMBEDDED_DRAFT, EMBEDDED_TARGET, assemble_embedded

        return assemble_embedded(EMBEDDED_TARGET if spec == "embedded" else EMBEDDED_DRAFT)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TokentreeError(f"no such GGUF file: {spec}")
    if not is_gguf(path):
        raise TokentreeError(f"{spec} is not a GGUF file")
    return path


def gguf_summary(path: Path) -> tuple[int, int | None]:
    """(parameter count, GGUF general.file_type or None) read from the file's header."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - a corrupt header raises many types
        raise TokentreeError(f"could not read the GGUF header of {path}: {exc}") from exc
    field = reader.fields.get("general.file_type")
    file_type = int(field.parts[field.data[0]][0]) if field is not None else None
    return sum(int(t.n_elements) for t in reader.tensors), file_type


def quantize(config: QuantizeConfig, progress: bool = True) -> Path:
    """Write ``config.output``: ``config.input`` quantized to ``config.type``. Returns the path."""
    source, target = input_path(config.input), Path(config.output).expanduser()
    if target.exists() and target.resolve() == source.resolve():
        raise TokentreeError("the output would overwrite the input: choose another OUTPUT")
    if target.exists() and not config.overwrite:
        raise TokentreeError(f"{target} exists: pass --overwrite to replace it")
    if not target.parent.is_dir():
        raise TokentreeError(f"no such directory for the output: {target.parent}")
    params_count, file_type = gguf_summary(source)
    if file_type not in UNQUANTIZED_FILE_TYPES and not config.allow_requantize:
        known = {ftype: name.upper() for name, (ftype, _) in QUANT_TYPES.items()}
        raise TokentreeError(
            f"{source.name} is already quantized "
            f"({known.get(file_type, f'file type {file_type}')}); "
            "quantizing it again "
            "loses more quality than quantizing from F16/BF16: pass --allow-requantize to do it"
        )
    lib = import_llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[config.type][0]
    params.nthread = config.threads or 0
    params.allow_requantize = config.allow_requantize
    if config.output_type is not None:
        params.output_tensor_type = OUTPUT_TYPES[config.output_type]
    partial = target.with_name(target.name + ".partial")
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            lib.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
        ),
        daemon=True,
    )
    start = time.perf_counter()
    worker.start()
    _show_progress(worker, partial, params_count * QUANT_TYPES[config.type][1] / 8, progress)
    if result != [0]:
        partial.unlink(missing_ok=True)
        raise TokentreeError(
            f"llama.cpp could not quantize {source.name} to {config.type} (code {result})"
        )
    partial.replace(target)
    if progress:
        print(
            f"tokentree: wrote {target} ({target.stat().st_size / 2**20:.0f} MiB, {config.type}) "
            "in "
            f"{time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
    return target


def _show_progress(
    worker: threading.Thread, partial: Path, expected_bytes: float, show: bool
) -> None:
    """A bar of the bytes written so far against the expected size, until ``worker`` ends."""
    from tqdm import tqdm

    with tqdm(
        total=int(expected_bytes),
        unit="B",
        unit_scale=True,
        desc="quantizing",
        file=sys.stderr,
        disable=not show,
    ) as bar:
        while worker.is_alive():
            worker.join(0.5)
            size = partial.stat().st_size if partial.exists() else 0
            bar.update(min(size, bar.total) - bar.n)
        bar.update(bar.total - bar.n)
