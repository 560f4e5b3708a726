"""The package's layering (docs/architecture.md): no import circle among skysub's modules, the
simulators import no estimator or photometer, nn/ stays pure torch, no source file grows past
~800 lines, and the public import paths of the learned methods keep working."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "skysub"
MAX_LINES = 800


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (p, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the skysub modules it imports, counting imports inside functions too (a lazy
    import is still a dependency: it only hides a circle until the function runs)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        pkg = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                # "from pkg import submodule" depends on the submodule
                targets = [f"{full}.{a.name}" if f"{full}.{a.name}" in mods else full
                           for a in node.names]
            for t in targets:
                if t.startswith("skysub"):
                    r = resolve(t)
                    if r and r != mod:
                        graph[mod].add(r)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_relative_and_lazy_imports():
    g = import_graph()
    # module-level relative import
    assert "skysub.background.base" in g["skysub.background.annulus"]
    # an import inside a function
    assert "skysub.nn.modelfile" in g["skysub.background.bkgnet.estimator"]


def test_no_import_circle_in_skysub():
    found = cycles(import_graph())
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("floor, forbidden", [
    # the simulators sit below every estimator and photometer
    ("skysub.simulate", ("skysub.background", "skysub.photometry", "skysub.removal",
                         "skysub.workflows", "skysub.pipeline", "skysub.batch", "skysub.cli")),
    # nn/ is pure torch: no FITS, catalogues, estimators or simulators
    ("skysub.nn", ("skysub.io", "skysub.background", "skysub.photometry", "skysub.removal",
                   "skysub.simulate", "skysub.workflows", "skysub.stamps")),
])
def test_lower_floors_do_not_reach_up(floor, forbidden):
    g = import_graph()
    bad = sorted((m, t) for m, ts in g.items() if m == floor or m.startswith(floor + ".")
                 for t in ts if any(t == f or t.startswith(f + ".") for f in forbidden))
    assert bad == [], f"{floor} imports from a higher floor: {bad}"


def test_no_source_file_over_800_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these (docs/architecture.md): {long}"


def test_documented_import_paths_of_the_learned_methods():
    from skysub.background.bkgnet import BKGnetBackground, BKGnetSettings, train_bkgnet
    from skysub.background.bkgnet.estimator import BKGnetBackground as B2
    from skysub.photometry.lumos import LumosPhotometer, train_lumos
    from skysub.photometry.lumos.photometer import LumosPhotometer as L2
    from skysub.removal import remove_sources
    from skysub.workflows import BACKGROUND_METHODS, PHOTOMETERS

    assert B2 is BKGnetBackground and L2 is LumosPhotometer
    assert callable(train_bkgnet) and callable(train_lumos) and callable(remove_sources)
    assert "bkgnet" in BACKGROUND_METHODS and "lumos" in PHOTOMETERS
    assert BKGnetSettings().stamp_size == 120


def test_stamp_sampling_defaults_match_bkgnet_settings():
    """The shared sampler's settings and BKGnet's [bkgnet] section describe the same
    sampling: every field they share has the same default."""
    from skysub.background.bkgnet import BKGnetSettings
    from skysub.simulate.trainingdata import StampSampling

    shared = {f.name for f in fields(StampSampling)}
    assert shared <= {f.name for f in fields(BKGnetSettings)}
    a, b = StampSampling(), BKGnetSettings()
    assert {k: getattr(a, k) for k in shared} == {k: getattr(b, k) for k in shared}
