"""The shape of the source tree, measured: lines per room, the longest functions and files,
imports that run against the layering, and import circles.

    python benchmarks/architecture.py [--src src/tokentree] [--json OUT]

Layers, lowest first (a module may import its own layer and those below; ``TYPE_CHECKING``
imports are not counted): the foundation (pure data and math), the parts (backends, drafters,
planner), the engine, the loaders, the hub (``api``), and the doors and tools on top.
"""

from __future__ import annotations

import argparse
import ast
import json
from collections import defaultdict
from pathlib import Path

LAYERS = [
    (
        "foundation",
        [
            "errors",
            "files",
            "reductions",
            "tree",
            "sampling",
            "stats",
            "text",
            "ledger",
            "logprobs",
        ],
    ),
    (
        "parts",
        [
            "backends",
            "drafters",
            "planner",
            "planner_plot",
            "kvcache",
            "ssm",
            "head",
            "chat",
            "constraints",
        ],
    ),
    ("engine", ["request", "toolcalls", "trace", "engine", "batch"]),
    ("loaders", ["models", "engine_choice"]),
    ("hub", ["api"]),
    (
        "doors",
        [
            "server",
            "cluster",
            "bench",
            "tools",
            "cli",
            "calibrate",
            "quantize",
            "show",
            "rollout_plot",
        ],
    ),
]
TOP = {"__init__": len(LAYERS)}  # the package's own __init__ re-exports the hub


def layer_of(module: str) -> int:
    """The layer index of ``tokentree.X...`` (by its first component X)."""
    head = module.split(".")[1] if "." in module else "__init__"
    if head in TOP:
        return TOP[head]
    for index, (_, names) in enumerate(LAYERS):
        if head in names:
            return index
    raise SystemExit(f"architecture.py: module {module} has no layer: add it to LAYERS")


def module_name(path: Path, src: Path) -> str:
    parts = ["tokentree", *path.relative_to(src).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Modules of tokentree that ``module`` imports (outside ``if TYPE_CHECKING``)."""
    found: set[str] = set()
    skip = {
        id(node)
        for cond in ast.walk(tree)
        if isinstance(cond, ast.If) and "TYPE_CHECKING" in ast.unparse(cond.test)
        for node in ast.walk(cond)
    }
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tokentree")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("tokentree"):
                found |= {f"{target}.{a.name}" for a in node.names} | {f"{target}:"}
    return found


def resolved(targets: set[str], modules: dict) -> set[str]:
    """``from X import a`` names module X.a when there is one, else X itself (marked ``X:``)."""
    out = {t for t in targets if t in modules}
    for t in targets:
        if t.endswith(":"):
            base = t[:-1]
            named = {n for n in targets if n.startswith(base + ".") and n in modules}
            if not named and base in modules:
                out.add(base)
    return out


def function_lengths(tree: ast.Module, module: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((node.end_lineno - node.lineno + 1, f"{module}:{node.name}"))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def measure(src: Path) -> dict:
    modules, lines, functions, graph = {}, {}, [], {}
    for path in sorted(src.rglob("*.py")):
        name = module_name(path, src)
        text = path.read_text()
        tree = ast.parse(text)
        modules[name] = path
        lines[name] = len(text.splitlines())
        functions += function_lengths(tree, name)
        graph[name] = imports_of(tree, name, path.name == "__init__.py")
    graph = {m: resolved(targets, modules) - {m} for m, targets in graph.items()}
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if layer_of(t) > layer_of(m) and not t == "tokentree"
    )
    rooms: dict[str, int] = defaultdict(int)
    for name, count in lines.items():
        rooms[".".join(name.split(".")[:2])] += count
    functions.sort(reverse=True)
    return {
        "total_lines": sum(lines.values()),
        "modules": len(lines),
        "rooms": dict(sorted(rooms.items(), key=lambda kv: -kv[1])),
        "files_over_500": sorted(f"{m} ({n})" for m, n in lines.items() if n > 500),
        "functions_over_60": [f"{f} ({n})" for n, f in functions if n > 60],
        "longest_functions": [f"{f} ({n})" for n, f in functions[:10]],
        "upward_imports": upward,
        "circles": cycles(graph),
        "top_level_modules": sorted(
            m for m, p in modules.items() if p.parent == src and p.name != "__init__.py"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="src/tokentree")
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()
    result = measure(Path(args.src))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['total_lines']} lines in {result['modules']} modules")
    for key in ("files_over_500", "functions_over_60", "upward_imports", "circles"):
        print(f"{key}: {len(result[key])}")
        for item in result[key]:
            print(f"  {item}")
    print(
        "rooms:",
        ", ".join(f"{k.removeprefix('tokentree.')} {v}" for k, v in result["rooms"].items()),
    )
    print("longest functions:", ", ".join(result["longest_functions"][:5]))
    print(f"top-level modules: {len(result['top_level_modules'])}")


if __name__ == "__main__":
    main()
