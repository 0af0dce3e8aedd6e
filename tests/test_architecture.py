"""The package's layers, walked from its own source: the analysis layer never reaches the training
layer (directly or through another module, imports inside functions included), the edges are
imported by nobody below them, nothing imports Streamlit, and there are no import circles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "proxyfda"

BASE = {"config", "errors", "paths", "registry", "device", "validation", "distributed"}
ANALYSIS = {"data", "backbones", "runs", "encoders", "safe_encoder", "features", "knn", "metrics", "drift",
            "projection", "zeroshot", "report_html", "vectors"}
TRAINING = {"losses", "losses.base", "losses.baselines", "losses.fda", "losses.proxy_generator", "losses.proxy_fda",
            "sampling", "methods", "training", "safe", "interpolation", "forgetting", "live", "proxy_debug", "teaching"}
EDGES = {"default", "cli", "__main__", ""}  # "" is the package face, proxyfda/__init__.py
#: which layers each layer may import
ALLOWED = {"base": {"base"}, "analysis": {"base", "analysis"}, "training": {"base", "analysis", "training"},
           "edges": {"base", "analysis", "training", "edges"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> str:
    for label, members in (("base", BASE), ("analysis", ANALYSIS), ("training", TRAINING), ("edges", EDGES)):
        if name in members:
            return label
    raise AssertionError(f"proxyfda.{name} is in no layer: add it to tests/test_architecture.py and docs/ARCHITECTURE.md")


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(proxyfda modules, top-level third-party packages) imported anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("proxyfda"):
                    ours.add(alias.name.removeprefix("proxyfda").lstrip("."))
                else:
                    theirs.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if (node.module or "").startswith("proxyfda"):
                    base = node.module.removeprefix("proxyfda").lstrip(".")
                else:
                    theirs.add((node.module or "").split(".")[0])
                    continue
            else:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                ours.add(sub if (PACKAGE / (sub.replace(".", "/") + ".py")).exists()
                         or (PACKAGE / sub.replace(".", "/") / "__init__.py").exists() else base)
    ours.discard(name)
    return ours, theirs


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_each_module_imports_only_its_layer_and_those_below(name):
    ours, theirs = GRAPH[name]
    wrong = sorted(other for other in ours if layer(other) not in ALLOWED[layer(name)])
    assert not wrong, f"proxyfda.{name} ({layer(name)}) imports {wrong} from a layer above it"
    assert "streamlit" not in theirs, f"proxyfda.{name} imports streamlit: UI code belongs in app/ or pages/"


def test_no_import_circles():
    graph = {name: {m for m in ours if m in GRAPH} for name, (ours, _) in GRAPH.items()}
    # a package face importing its own submodules is not a circle unless one of them imports it back
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_a_page_served_from_the_caches_never_imports_torch():
    """The library's analysis path and the app's page modules stay free of torch (the five-second start)."""
    code = ("import sys; import proxyfda.drift, proxyfda.encoders, proxyfda.data, proxyfda.projection, "
            "proxyfda.runs, proxyfda.knn, app.pipeline, app.report_views, app.linked_maps, app.neighbours, "
            "app.drift_controls, app.session, app.timeline_view, app.routes; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
