"""The layer rules of STYLE.md, enforced with import-linter (contracts in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports not installed: install the dev extra (pip install -e '.[dev]')")
    result = subprocess.run([lint], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_ingest_starts_without_torch() -> None:
    """``ringmoe-data`` and every spawned ingest worker import ``data_pipeline`` only: pulling torch in (webdataset
    does) costs ~1.2 s per process for nothing the ingest uses."""
    code = (
        "import sys, data_pipeline.cli, data_pipeline.build; "
        "print([m for m in ('torch', 'webdataset') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def import_cycles(graph, modules: set[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module among ``modules`` (Tarjan, iterative), counting every
    import, also those inside functions: a cycle hidden by a local import is still a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        cycles.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return cycles


@pytest.mark.parametrize("package", ["ringmoe", "data_pipeline"])
def test_no_import_cycles(package: str) -> None:
    import grimp

    graph = grimp.build_graph(package)
    assert import_cycles(graph, set(graph.modules)) == []


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path, monkeypatch) -> None:
    import grimp

    pkg = tmp_path / "loopy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from loopy import b\n")
    (pkg / "b.py").write_text("def f():\n    from loopy import a\n")
    (pkg / "c.py").write_text("from loopy import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("loopy", cache_dir=None)
    assert import_cycles(graph, set(graph.modules)) == [["loopy.a", "loopy.b"]]
