"""The rooms hold: no import runs against the layering, no circles, no file over 500 lines and no
function over 60 in src/ (``python benchmarks/architecture.py`` prints the same measurements)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def architecture():
    spec = importlib.util.spec_from_file_location(
        "architecture", ROOT / "benchmarks" / "architecture.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_source_tree_keeps_its_rooms():
    result = architecture().measure(ROOT / "src" / "tokentree")
    assert result["upward_imports"] == []
    assert result["circles"] == []
    assert result["files_over_500"] == []
    assert result["functions_over_60"] == []


def test_the_measure_sees_a_planted_upward_import_and_circle(tmp_path):
    package = tmp_path / "tokentree"
    (package / "backends").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "backends" / "__init__.py").write_text("from ..api import load\n")
    (package / "api.py").write_text("from .backends import x\n\ndef load():\n    pass\n")
    result = architecture().measure(package)
    assert result["upward_imports"] == ["tokentree.backends -> tokentree.api"]
    assert result["circles"] == [["tokentree.api", "tokentree.backends"]]
