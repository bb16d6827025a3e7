"""The import graph stays layered: no import cycle, no package imports one above it, inside benchmark/ no part
(cache, record, inputs, plan, report, run, the command line) imports one above it, and every import of a project
module made inside a function says why it is not at the top of its module.

Read from the source with `ast`, without importing anything: every `import` and `from ... import` of a project
module, at module level AND inside functions (a function-local import still ties two modules; it only hides the
cycle until the function runs). Imports under `if TYPE_CHECKING:` are left out: they never run.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the project's packages, lowest layer first; a package may import only packages of a lower rank (equal ranks:
# neither imports the other). tests/ and perf/ sit above all of them: no package imports them.
RANKS = {"core": 0, "upstream": 1, "corpora": 2, "downstream": 3, "pretrain": 4, "benchmark": 5, "analysis": 6,
         "hear_api": 6}
ABOVE_ALL = ("tests", "perf")
# upward imports known and not fixed yet, as (importing module, imported module); each is a debt to pay off
KNOWN_UPWARD: set[tuple[str, str]] = set()  # (importer, imported) pairs accepted for now: none
# benchmark/'s parts (its subpackages, and cli.py), lowest first (docs/architecture.md): a module imports modules of its
# own part or of a lower rank only (equal ranks: neither imports the other). The feature cache, the record (the rows and
# their files) and the inputs (corpus, upstreams) stand on the packages below benchmark/ alone; the plan reads the
# inputs, the record and the cache without building anything; the report reads the record, the cache and the inputs;
# a run uses all of these and rebuilds the report at its end; the command line sits on top.
BENCHMARK_PARTS = {"cache": 0, "record": 0, "inputs": 0, "plan": 1, "report": 1, "run": 2, "cli": 3}

Edge = tuple[str, str, int]  # (importing module, imported module, line)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in RANKS for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of the tree (any depth), leaving out the bodies of `if TYPE_CHECKING:`."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that `name` (a dotted path, maybe ending in an attribute) is or lies in."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def import_edges(modules: dict[str, Path]) -> list[Edge]:
    """(importer, imported, line) for every import of one project module by another."""
    known = set(modules)
    tops = {m.split(".")[0] for m in known} | set(ABOVE_ALL)
    edges: list[Edge] = []
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` packages up
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, *([base] if base else [])])
                # `from pkg import mod` imports the submodule pkg.mod; `from mod import name` the module itself
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t.split(".")[0] not in tops:
                    continue  # a third-party or standard-library module
                # tests/ and perf/ are not parsed: an import of them keeps the name as written
                hit = _resolve(t, known) or t
                if hit != mod:
                    edges.append((mod, hit, node.lineno))
    return edges


def cycles(nodes: set[str], edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b, _ in edges:
        if a in nodes and b in nodes:
            graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
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

    for v in sorted(nodes):
        if v not in index:
            strongconnect(v)
    return out


def _cycle_message(comps: list[list[str]], edges: list[Edge], modules: dict[str, Path]) -> str:
    lines = []
    for comp in comps:
        lines.append(f"import cycle among {len(comp)} modules: {', '.join(comp)}")
        members = set(comp)
        for a, b, line in sorted(set(edges)):
            if a in members and b in members:
                lines.append(f"    {modules[a].relative_to(ROOT)}:{line} imports {b}")
    return "\n".join(lines)


def test_benchmark_has_no_import_cycle():
    modules = project_modules()
    edges = import_edges(modules)
    benchmark = {m for m in modules if m.split(".")[0] == "benchmark"}
    comps = cycles(benchmark, edges)
    assert not comps, ("benchmark/ must stay a layered package (move the shared name down, e.g. into "
                       "benchmark/record/schema.py or benchmark/plan/config.py, instead of importing up):\n"
                       + _cycle_message(comps, edges, modules))


def test_no_import_cycle_in_any_package():
    """The same for every package parsed here (a cycle across packages also breaks the layers below)."""
    modules = project_modules()
    edges = import_edges(modules)
    comps = cycles(set(modules), edges)
    assert not comps, _cycle_message(comps, edges, modules)


def test_packages_import_only_lower_layers():
    modules = project_modules()
    upward = set()
    where: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a, b, line in import_edges(modules):
        pa, pb = a.split(".")[0], b.split(".")[0]
        if pa == pb:
            continue
        if pb in ABOVE_ALL or RANKS[pb] >= RANKS[pa]:
            upward.add((a, b))
            where[(a, b)].append(f"{modules[a].relative_to(ROOT)}:{line}")
    new = sorted(upward - KNOWN_UPWARD)
    layers = " < ".join(", ".join(p for p in RANKS if RANKS[p] == r) for r in sorted(set(RANKS.values())))
    assert not new, (f"imports of a package from one at its layer or above (layers, lowest first: {layers}; "
                     f"nothing imports {', '.join(ABOVE_ALL)}):\n"
                     + "\n".join(f"    {', '.join(where[e])}: {e[0]} imports {e[1]}" for e in new))
    gone = sorted(KNOWN_UPWARD - upward)
    assert not gone, f"known upward imports no longer there (delete them from KNOWN_UPWARD): {gone}"


def benchmark_part(module: str) -> str | None:
    """The part of benchmark/ a module is in: 'benchmark.plan.shards' -> 'plan', 'benchmark.cli' -> 'cli'; None for
    the package itself (benchmark/__init__.py) and for modules of other packages."""
    parts = module.split(".")
    return parts[1] if parts[0] == "benchmark" and len(parts) > 1 else None


def part_violations(edges: list[Edge], ranks: dict[str, int]) -> list[Edge]:
    """The imports between two parts of benchmark/ that do not go strictly down `ranks` (up, or across one rank)."""
    out = []
    for a, b, line in edges:
        pa, pb = benchmark_part(a), benchmark_part(b)
        if pa is not None and pb is not None and pa != pb and ranks[pb] >= ranks[pa]:
            out.append((a, b, line))
    return out


def test_every_benchmark_module_is_in_a_part():
    """A new module of benchmark/ goes into one of its parts (or, a new part, into BENCHMARK_PARTS with its rank)."""
    parts = {benchmark_part(m) for m in project_modules()} - {None}
    assert parts == set(BENCHMARK_PARTS), (f"benchmark/ holds {sorted(parts - set(BENCHMARK_PARTS))} that are no part "
                                           f"of BENCHMARK_PARTS, which names {sorted(set(BENCHMARK_PARTS) - parts)} "
                                           f"that benchmark/ does not hold")


def test_benchmark_parts_import_only_lower_parts():
    """The parts of benchmark/ are layers: no import goes up, or across to a part of the same rank, so no cycle can
    join two parts (a cycle inside one part fails test_benchmark_has_no_import_cycle)."""
    modules = project_modules()
    bad = part_violations(import_edges(modules), BENCHMARK_PARTS)
    order = " < ".join(", ".join(p for p in BENCHMARK_PARTS if BENCHMARK_PARTS[p] == r)
                       for r in sorted(set(BENCHMARK_PARTS.values())))
    assert not bad, (f"imports of a part of benchmark/ from one at its rank or above (parts, lowest first: {order}); "
                     f"move the shared name down instead:\n"
                     + "\n".join(f"    {modules[a].relative_to(ROOT)}:{line}: {benchmark_part(a)} imports "
                                 f"{benchmark_part(b)} ({b})" for a, b, line in sorted(bad)))


def test_the_part_rule_sees_up_and_across():
    ranks = {"cache": 0, "record": 0, "plan": 1, "run": 2}
    edges = [("benchmark.run.runner", "benchmark.plan.runs", 1),  # down: fine
             ("benchmark.plan.runs", "benchmark.plan.config", 2),  # inside one part: the cycle test's
             ("benchmark.plan.shards", "benchmark.run.runner", 3),  # up
             ("benchmark.cache.reader", "benchmark.record.schema", 4),  # across one rank
             ("benchmark.plan.runs", "core.io", 5)]  # another package: test_packages_import_only_lower_layers's
    assert [line for *_, line in part_violations(edges, ranks)] == [3, 4]
    assert benchmark_part("benchmark") is None and benchmark_part("benchmark.cli") == "cli"


def test_the_graph_reader_sees_function_level_imports_and_skips_type_checking():
    """The reader itself: a function-local import counts, an `if TYPE_CHECKING:` one does not."""
    src = ("from typing import TYPE_CHECKING\nfrom benchmark.record.schema import RUN_COLUMNS\nif TYPE_CHECKING:\n"
           "    from benchmark.run.runner import RunnerStats\nelse:\n    import benchmark.cache.extract\n"
           "def f():\n    from benchmark.report import plots\n    import core.io as cio\n")
    found = {(n.module if isinstance(n, ast.ImportFrom) else n.names[0].name) for n in _imports(ast.parse(src))}
    assert found == {"typing", "benchmark.record.schema", "benchmark.cache.extract", "benchmark.report", "core.io"}
    known = set(project_modules())
    assert {"benchmark.plan.runs", "benchmark.plan.shapes", "core.io", "downstream.tasks", "pretrain"} <= known
    assert _resolve("benchmark.report.plots", known) == "benchmark.report.plots"
    assert _resolve("benchmark.record.schema.RUN_COLUMNS", known) == "benchmark.record.schema"
    assert cycles({"a", "b", "c"}, [("a", "b", 1), ("b", "c", 1), ("c", "a", 1)]) == [["a", "b", "c"]]


# Files the reason check below skips (a folder, ending in "/", skips every file under it): none. An entry is a debt,
# like KNOWN_UPWARD above.
LOCAL_IMPORT_CHECK_SKIPS: frozenset[str] = frozenset()


def unexplained_local_imports(src: str) -> list[int]:
    """Lines of the function-local imports of project modules in `src` that give no reason: a comment on one of the
    statement's lines or on the line just above it. A module-level import costs nothing to read; one inside a
    function hides a dependency (and any cycle it closes) until the function runs, so it must say why it is there
    (an optional dependency, a module that is slow to load and needed on one path only)."""
    tops = set(RANKS) | set(ABOVE_ALL)
    lines = src.splitlines()
    out: list[int] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        if in_function and isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            project = (isinstance(node, ast.ImportFrom) and node.level > 0) or any(
                n.split(".")[0] in tops for n in names)
            own = lines[node.lineno - 1: node.end_lineno or node.lineno]
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if project and not any("#" in line for line in own) and not above.startswith("#"):
                out.append(node.lineno)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(src), False)
    return out


def _skipped(rel: str) -> bool:
    return any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in LOCAL_IMPORT_CHECK_SKIPS)


def test_every_function_local_project_import_says_why():
    """Each import of a project module inside a function carries its reason (tests/ and perf/ are not checked)."""
    for s in LOCAL_IMPORT_CHECK_SKIPS:  # a renamed or deleted file must leave the list, not hide a new one
        assert (ROOT / s).exists(), f"LOCAL_IMPORT_CHECK_SKIPS names {s}, which is not in the repository"
    bad = []
    for path in project_modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if not _skipped(rel):
            bad += [f"{rel}:{n}" for n in unexplained_local_imports(path.read_text(encoding="utf-8"))]
    assert not bad, ("function-local imports of project modules without a reason: move each to the top of its module, "
                     "or say on its line (or the line above) why it must stay inside the function:\n    "
                     + "\n    ".join(bad))


def test_the_reason_check_sees_what_it_should():
    src = ("import benchmark.plan.runs\n"                                # 1 module level: fine
           "def f():\n"
           "    import json\n"                                          # 3 not a project module
           "    from core.io import read_json\n"                        # 4 unexplained
           "    from benchmark.report import plots  # matplotlib: drawing\n"  # 5 reason on its line
           "    # s3prl is optional\n"
           "    from upstream.s3prl_hub import NAMES\n"                  # 7 reason above
           "    from . import sibling\n"                                # 8 relative: a project module, unexplained
           "    from corpora.manifest import (Corpus,\n"
           "                                  load_corpus)  # slow to load\n"  # 9-10 reason on its last line
           "    if TYPE_CHECKING:\n"
           "        from benchmark.run.runner import RunnerStats\n"      # 12 never runs
           "    g = lambda: __import__('core')\n"
           "class C:\n"
           "    from core.frames import FrameRule\n"                    # 15 class body at module level: runs on import
           "    def m(self):\n"
           "        from analysis import attention\n")                  # 17 unexplained, in a method
    assert unexplained_local_imports(src) == [4, 8, 17]
    assert not _skipped("benchmark/cli.py") and not _skipped("downstream/feeds.py")  # the list is empty
