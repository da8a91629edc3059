"""The CLI on a tiny model saved to a temp dir: JSON round trip and one-line errors."""

import hashlib
import io
import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from test_greedy_equality import hf_greedy
from transformers import AutoModelForCausalLM, MambaConfig

from tokentree.cli import main
from tokentree.errors import TokentreeError
from tokentree.models import EmbeddedModel, assemble_embedded


def run_cli(args, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_round_trip_matches_hf_greedy(saved_tiny_model, capsys):
    code, out, err = run_cli(
        [
            "generate",
            "hello",
            "--target",
            str(saved_tiny_model),
            "--dtype",
            "float32",
            "--max-new-tokens",
            "20",
            "--json",
            "--drafter",
            "pld-tree",
            "--pld-matches",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    tok = tiny_tokenizer()
    prompt = tok(
        tok.apply_chat_template(
            [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
        ),
        add_special_tokens=False,
    ).input_ids
    model = AutoModelForCausalLM.from_pretrained(saved_tiny_model, dtype=torch.float32)
    assert result["token_ids"] == hf_greedy(model, prompt, 20)
    assert result["text"] == tok.decode(result["token_ids"], skip_special_tokens=True)
    stats = result["stats"]
    assert stats["new_tokens"] == 20 and stats["steps"] >= 1 and stats["tokens_per_step"] >= 1
    assert set(stats) >= {"tokens_per_s", "accepted_hist", "draft_s", "verify_s"}


@pytest.mark.parametrize("drafter", ["pld", "chain"])
def test_generate_through_the_static_cache_matches_hf_greedy(saved_tiny_model, capsys, drafter):
    args = ["generate", "hello hello", "--target", str(saved_tiny_model), "--dtype", "float32"]
    args += ["--max-new-tokens", "24", "--json", "--drafter", drafter, "--static-cache", "96"]
    args += ["--draft", str(saved_tiny_model)] if drafter == "chain" else []
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    tok = tiny_tokenizer()
    messages = [{"role": "user", "content": "hello hello"}]
    prompt = tok(
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    ).input_ids
    model = AutoModelForCausalLM.from_pretrained(saved_tiny_model, dtype=torch.float32)
    assert json.loads(out)["token_ids"] == hf_greedy(model, prompt, 24)


def test_stdin_prompt_streaming_and_stats(saved_tiny_model, capsys, monkeypatch):
    code, out, err = run_cli(
        [
            "generate",
            "--target",
            str(saved_tiny_model),
            "--dtype",
            "float32",
            "--no-chat",
            "--max-new-tokens",
            "8",
            "--stats",
        ],
        capsys,
        stdin="abc abc",
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    tok = tiny_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(saved_tiny_model, dtype=torch.float32)
    expected = hf_greedy(model, tok("abc abc").input_ids, 8)  # the prompt came from stdin
    assert out == tok.decode(expected, skip_special_tokens=True) + "\n"
    summary = re.search(r"(\d+) tokens in (\d+) steps, tau ([\d.]+), ([\d.]+) tokens/s", err)
    assert summary, err
    tokens, steps, tau, rate = summary.groups()
    assert int(tokens) == 8 and 1 <= int(steps) <= 8 and float(rate) > 0
    assert float(tau) == pytest.approx(8 / int(steps), abs=0.006)
    assert "transformers ran the target" in err


def test_console_script_runs(saved_tiny_model):
    exe = [sys.executable, "-m", "tokentree.cli"]
    done = subprocess.run(
        exe
        + [
            "generate",
            "hi",
            "--target",
            str(saved_tiny_model),
            "--dtype",
            "float32",
            "--max-new-tokens",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["token_ids"]) == 4


def error_of(args, capsys, **kw):
    code, out, err = run_cli(args, capsys, **kw)
    assert code == 2
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if line.startswith("tokentree: error:")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    return errors[0]


def test_missing_model_path(capsys, tmp_path):
    assert "no such model" in error_of(
        ["generate", "x", "--target", str(tmp_path / "nope.gguf")], capsys
    )
    assert "no such model" in error_of(["generate", "x", "--target", "./missing-dir"], capsys)


def test_directory_without_config(capsys, tmp_path):
    assert "no config.json" in error_of(["generate", "x", "--target", str(tmp_path)], capsys)


def test_corrupt_weights(saved_tiny_model, capsys):
    (saved_tiny_model / "model.safetensors").write_bytes(b"this is not a safetensors file")
    assert "could not load model" in error_of(
        ["generate", "x", "--target", str(saved_tiny_model)], capsys
    )


def test_corrupt_gguf(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTREE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really")
    assert "could not read GGUF" in error_of(["generate", "x", "--target", str(bad)], capsys)


def test_draft_with_different_vocabulary(saved_tiny_model, capsys, tmp_path):
    other = tmp_path / "other"
    tiny_model("llama").save_pretrained(other)
    tok = tiny_tokenizer()
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    line = error_of(
        [
            "generate",
            "x",
            "--target",
            str(saved_tiny_model),
            "--draft",
            str(other),
            "--dtype",
            "float32",
        ],
        capsys,
    )
    assert "different vocabularies" in line


def test_unsupported_model_names_its_type(capsys, tmp_path):
    path = tmp_path / "mamba"
    AutoModelForCausalLM.from_config(
        MambaConfig(vocab_size=96, hidden_size=16, num_hidden_layers=1, state_size=4)
    ).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    assert "'mamba'" in error_of(
        ["generate", "x", "--target", str(path), "--dtype", "float32"], capsys
    )


@pytest.mark.parametrize(
    "args,match",
    [
        (["--drafter", "magic"], "unknown drafter"),
        (["--drafter", "none", "--pld-matches", "2"], "does not apply"),
        (["--drafter", "pld", "--pld-min-ngram", "0"], "min_ngram"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--device", "cuda:0"], "CUDA"),
        (["--compile"], "--compile needs --static-cache"),
        (["--static-cache", "8"], "at least 16"),
        (["--static-cache", "64", "--backend", "llamacpp"], "need --backend hf"),
        (["--static-cache", "20", "--max-new-tokens", "30"], "raise --static-cache"),
    ],
)
def test_bad_arguments(saved_tiny_model, capsys, args, match):
    line = error_of(
        ["generate", "x", "--target", str(saved_tiny_model), "--dtype", "float32"] + args, capsys
    )
    assert match in line


def test_empty_stdin(capsys, monkeypatch):
    assert "empty" in error_of(["generate"], capsys, stdin="  \n", monkeypatch=monkeypatch)


def test_embedded_models_missing_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTREE_CACHE", str(tmp_path))
    with pytest.raises(TokentreeError, match=r"tokentree\[models\]"):
        assemble_embedded(EmbeddedModel("absent", ("no_such_pkg_xyz",), "0" * 64))


def test_embedded_assembly_checks_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTREE_CACHE", str(tmp_path / "cache"))
    for i, chunk in enumerate([b"hello ", b"world"], start=1):
        (tmp_path / f"fakemodel_part{i}" / "data").mkdir(parents=True)
        (tmp_path / f"fakemodel_part{i}" / "__init__.py").write_text("")
        (tmp_path / f"fakemodel_part{i}" / "data" / "part01.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path))
    packages = ("fakemodel_part1", "fakemodel_part2")
    with pytest.raises(TokentreeError, match="does not match"):
        assemble_embedded(EmbeddedModel("fake", packages, "0" * 64))
    path = assemble_embedded(
        EmbeddedModel("fake", packages, hashlib.sha256(b"hello world").hexdigest())
    )
    assert path.read_bytes() == b"hello world"


def test_seeded_sampling_from_the_cli_repeats(saved_tiny_model, capsys):
    args = [
        "generate",
        "hello",
        "--target",
        str(saved_tiny_model),
        "--dtype",
        "float32",
        "--max-new-tokens",
        "16",
        "--json",
        "--drafter",
        "stand",
        "--temperature",
        "0.9",
        "--top-p",
        "0.9",
        "--min-p",
        "0.01",
        "--seed",
        "4",
    ]
    first, second = run_cli(args, capsys), run_cli(args, capsys)
    tokens = [json.loads(out)["token_ids"] for _, out, _ in (first, second)]
    assert first[0] == 0 and tokens[0] == tokens[1] and len(tokens[0]) == 16


@pytest.mark.parametrize(
    "args,match",
    [
        (["--port", "70000"], "port"),
        (["--max-queue", "0"], "max-queue"),
        (["--request-timeout", "-1"], "request-timeout"),
        (["--static-cache", "256", "--max-batch", "4"], "--max-batch 1"),
    ],
)
def test_serve_rejects_bad_options_before_loading(capsys, args, match):
    code, _, err = run_cli(["serve", "--target", "/nonexistent/model", *args], capsys)
    assert code == 2 and match in err and "Traceback" not in err


def test_serve_reports_a_busy_port(saved_tiny_model, capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, _, err = run_cli(
            ["serve", "--target", str(saved_tiny_model), "--dtype", "float32", "--port", str(port)],
            capsys,
        )
    assert code == 2 and "cannot listen" in err


def test_profile_command_prints_the_curve_and_caches_it(
    saved_tiny_model, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("TOKENTREE_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(
        [
            "profile",
            "--target",
            str(saved_tiny_model),
            "--dtype",
            "float32",
            "--plot",
            str(tmp_path / "curve.png"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "| 128 |" in out and (tmp_path / "curve.png").stat().st_size > 0
    assert list((tmp_path / "cache" / "profiles").glob("*.json"))
    code, out, err = run_cli(
        [
            "generate",
            "abc abc abc",
            "--target",
            str(saved_tiny_model),
            "--dtype",
            "float32",
            "--max-new-tokens",
            "12",
            "--budget",
            "auto",
            "--json",
        ],
        capsys,
    )
    assert code == 0 and len(json.loads(out)["token_ids"]) == 12
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "x", "--target", str(saved_tiny_model), "--budget", "lots"])
    assert exit_info.value.code == 2 and "'auto'" in capsys.readouterr().err


def test_calibrate_then_generate_with_sequoia(saved_tiny_model, capsys, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"question_id": 1, "category": "x", "turns": ["abc abc abc"]}\n'
        '{"question_id": 2, "category": "y", "turns": ["hello hello"]}\n'
    )
    out = tmp_path / "cal.json"
    code, stdout, err = run_cli(
        [
            "calibrate",
            "--target",
            str(saved_tiny_model),
            "--draft",
            str(saved_tiny_model),
            "--dtype",
            "float32",
            "--prompts",
            str(prompts),
            "--limit",
            "1",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    vector = json.loads(out.read_text())["vector"]
    assert vector[0] == pytest.approx(
        1.0
    )  # the target drafting for itself: its own token always ranks first
    code, stdout, err = run_cli(
        [
            "generate",
            "abc",
            "--target",
            str(saved_tiny_model),
            "--draft",
            str(saved_tiny_model),
            "--dtype",
            "float32",
            "--drafter",
            "sequoia",
            "--sequoia-calibration",
            str(out),
            "--max-new-tokens",
            "10",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(stdout)["stats"]["tokens_per_step"] > 1.5
    code, _, err = run_cli(
        ["generate", "abc", "--target", str(saved_tiny_model), "--drafter", "chain"], capsys
    )
    assert code == 2 and "needs a draft model" in err


def test_boolean_and_shared_drafter_flags_parse():
    from tokentree.cli import build_parser, drafter_options

    args = build_parser().parse_args(
        ["generate", "x", "--drafter", "chain", "--chain-adaptive", "false"]
    )
    assert drafter_options(args) == {"adaptive": False}
    args = build_parser().parse_args(
        ["generate", "x", "--drafter", "rsd-c", "--rsdc-widths", "3,2"]
    )
    assert drafter_options(args) == {"widths": "3,2"}
    args = build_parser().parse_args(
        ["generate", "x", "--drafter", "rsd-c", "--specinfer-widths", "3,2"]
    )
    with pytest.raises(TokentreeError, match="does not apply"):
        drafter_options(args)


def test_train_head_then_generate_with_eagle(saved_tiny_model, capsys, tmp_path):
    head = tmp_path / "head"
    target = ["--target", str(saved_tiny_model), "--dtype", "float32"]
    code, _, err = run_cli(
        ["train-head", *target, "--tokens", "640", "--max-doc-tokens", "64", "--minutes", "0.02"]
        + ["--out", str(head)],
        capsys,
    )
    assert code == 0, err
    assert "accepted_per_chain_estimate" in err and (head / "head.pt").is_file()
    code, _, err = run_cli(
        ["train-head", *target, "--minutes", "0.01", "--out", str(head), "--resume"], capsys
    )
    assert code == 0 and "features: " in err, err  # resumed on the saved features
    code, out, err = run_cli(
        ["generate", "hello", *target, "--backend", "hf", "--max-new-tokens", "12", "--json"]
        + ["--drafter", "eagle", "--eagle-head", str(head)],
        capsys,
    )
    assert code == 0, err
    tok = tiny_tokenizer()
    prompt = tok(
        tok.apply_chat_template(
            [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
        ),
        add_special_tokens=False,
    ).input_ids
    model = AutoModelForCausalLM.from_pretrained(saved_tiny_model, dtype=torch.float32)
    assert json.loads(out)["token_ids"] == hf_greedy(model, prompt, 12)


@pytest.mark.parametrize(
    "args,match",
    [
        (["train-head", "--target", "GGUF"], "transformers target"),
        (["train-head", "--minutes", "0"], "minutes must be > 0"),
        (["train-head", "--unroll", "9"], "unroll"),
        (["train-head", "--resume", "--out", "/nonexistent/head"], "no trained head"),
        (["generate", "x", "--drafter", "eagle", "--eagle-head", "/nonexistent"], "train-head"),
    ],
)
def test_train_head_and_eagle_errors(saved_tiny_model, capsys, tmp_path, args, match):
    if "GGUF" in args:
        (tmp_path / "model.gguf").write_bytes(b"GGUF" + bytes(64))
        args = [str(tmp_path / "model.gguf") if a == "GGUF" else a for a in args]
    if "--resume" in args or "generate" in args:
        args = args + ["--target", str(saved_tiny_model), "--dtype", "float32"]
    assert match in error_of(args, capsys)
