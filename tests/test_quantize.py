"""``tokentree quantize`` (llama.cpp's quantizer) and the CPU default backend."""

import pytest
from test_llamacpp import gguf  # noqa: F401 - the SmolLM2 GGUF fixture

from tokentree.api import loading as api
from tokentree.api import resolve_backend
from tokentree.cli import main
from tokentree.errors import TokentreeError
from tokentree.tools.quantize import QuantizeConfig, gguf_summary, quantize


@pytest.mark.slow
def test_quantize_writes_a_gguf_that_decodes(gguf, tmp_path):  # noqa: F811
    out = tmp_path / "smol-q8_0.gguf"
    quantize(
        QuantizeConfig(str(gguf), str(out), "q8_0", threads=2, allow_requantize=True),
        progress=False,
    )
    params, file_type = gguf_summary(out)
    assert file_type == 7 and params == gguf_summary(gguf)[0]  # Q8_0, every tensor kept
    assert not (tmp_path / "smol-q8_0.gguf.partial").exists()
    gen = api.load(str(out), drafter="none", backend="llamacpp", threads=2, n_ctx=1024)
    assert len(gen.generate("def add(a, b):", max_new_tokens=8, chat=False).token_ids) == 8


@pytest.mark.slow
def test_quantize_sets_the_output_layer_type(gguf, tmp_path):  # noqa: F811
    """--output-type decides the output layer (SmolLM2 ties it to the embedding, which then takes
    it)."""
    from gguf import GGUFReader

    def output_layer_type(path):
        tensors = {t.name: int(t.tensor_type) for t in GGUFReader(str(path)).tensors}
        return tensors.get("output.weight", tensors["token_embd.weight"])

    types = {}
    for output_type in (None, "q4_0"):
        out = tmp_path / f"smol-{output_type}.gguf"
        quantize(
            QuantizeConfig(
                str(gguf),
                str(out),
                "q8_0",
                threads=2,
                allow_requantize=True,
                output_type=output_type,
            ),
            progress=False,
        )
        types[output_type] = output_layer_type(out)
    assert types == {None: 8, "q4_0": 2}  # ggml types Q8_0 and Q4_0


def test_quantize_user_mistakes_are_one_line_errors(gguf, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out.gguf"
    cases = [
        ([str(gguf), str(out), "--type", "q9_9"], "unknown quantization type 'q9_9'"),
        ([str(gguf), str(out), "--output-type", "q9"], "unknown output layer type 'q9'"),
        ([str(tmp_path / "missing.gguf"), str(out)], "no such GGUF file"),
        (
            [str(gguf), str(out)],
            "already quantized",
        ),  # SmolLM2 ships quantized: needs --allow-requantize
        ([str(gguf), str(gguf), "--allow-requantize"], "overwrite the input"),
        ([str(gguf), str(tmp_path / "no" / "dir.gguf"), "--allow-requantize"], "no such directory"),
    ]
    (tmp_path / "text.gguf").write_text("not a model")
    cases.append(([str(tmp_path / "text.gguf"), str(out)], "not a GGUF file"))
    cases.append(
        ([str(gguf), str(tmp_path / "text.gguf"), "--allow-requantize"], "pass --overwrite")
    )
    for argv, message in cases:
        assert main(["quantize", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not out.exists()


def test_quantize_refuses_to_overwrite_its_input_even_with_overwrite(gguf):  # noqa: F811
    with pytest.raises(TokentreeError, match="overwrite the input"):
        quantize(
            QuantizeConfig(str(gguf), str(gguf), "q8_0", allow_requantize=True, overwrite=True),
            progress=False,
        )


def test_auto_backend_is_llamacpp_for_the_embedded_default_on_a_cpu(monkeypatch):
    monkeypatch.setattr(api, "llama_cpp_installed", lambda: True)
    monkeypatch.setattr(api.torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto", None) == "llamacpp"
    assert resolve_backend("auto", "model.gguf") == "llamacpp"
    assert resolve_backend("auto", "./hf-dir") == "hf"
    assert resolve_backend("auto", None, "cuda") == "hf"  # a GPU asked for: transformers
    assert resolve_backend("hf", None) == "hf"
    monkeypatch.setattr(api.torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto", None) == "hf"  # a GPU machine keeps transformers
    assert resolve_backend("auto", None, "cpu") == "llamacpp"
    monkeypatch.setattr(api, "llama_cpp_installed", lambda: False)
    assert (
        resolve_backend("auto", None, "cpu") == "hf"
    )  # without the extra: transformers, with a note
