"""The layout of DESIGN.md section 1, checked on the source: no import cycles, independent libraries,
commands that nothing imports (read with ``ast``; the negative controls show the checks can fail)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from .import_graph import cycles, import_graph, modules_of, package_graph

LIBRARIES = ("taichi_mpm", "render", "prior")
PACKAGES = LIBRARIES + ("cli", "benchmarks")
TESTS = Path(__file__).resolve().parent


def _installed_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for name in PACKAGES:
        pkg = importlib.import_module(f"dreamcloth.{name}")
        files.update(modules_of(Path(pkg.__path__[0]), f"dreamcloth.{name}"))
    return files


FILES = _installed_files()
GRAPH = import_graph(FILES)


def test_the_walk_sees_the_whole_package():
    for module in ("dreamcloth.taichi_mpm.simulate", "dreamcloth.cli.app", "dreamcloth.cli.pipeline.fit",
                   "dreamcloth.benchmarks.accuracy", "dreamcloth.prior.sds", "dreamcloth.render.rasterize"):
        assert module in FILES, module
    assert "dreamcloth.taichi_mpm.simulate" in GRAPH["dreamcloth.taichi_mpm"]
    assert "dreamcloth.cli.pipeline.fit" in GRAPH["dreamcloth.cli.pipeline.fit_video"]


def test_no_module_level_import_cycle():
    assert cycles(GRAPH) == []


def test_no_package_level_import_cycle():
    assert cycles(package_graph(GRAPH, FILES)) == []


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_import_no_other_library_nor_the_application(library):
    others = tuple(f"dreamcloth.{p}" for p in PACKAGES if p != library)
    bad = sorted((m, d) for m, deps in GRAPH.items() if m.startswith(f"dreamcloth.{library}")
                 for d in deps if d.startswith(others))
    assert bad == []


def _is_command(module: str) -> bool:
    return module == "dreamcloth.cli.app" or (module.startswith("dreamcloth.cli.") and module.endswith("_cmd")
                                              and module.count(".") == 2)


def test_no_command_module_is_imported_but_by_app():
    commands = [m for m in FILES if _is_command(m)]
    assert "dreamcloth.cli.fit_cmd" in commands and "dreamcloth.cli.app" in commands
    bad = sorted((m, d) for m, deps in GRAPH.items() for d in deps if _is_command(d) and m != "dreamcloth.cli.app")
    assert bad == []


def test_tests_import_no_command_module_but_app():
    files = dict(FILES)
    files.update(modules_of(TESTS, "tests"))
    graph = import_graph(files)
    bad = sorted((m, d) for m, deps in graph.items() if m.startswith("tests")
                 for d in deps if _is_command(d) and d != "dreamcloth.cli.app")
    assert bad == []


def test_pipeline_imports_no_command_module_nor_benchmarks():
    bad = sorted((m, d) for m, deps in GRAPH.items() if m.startswith("dreamcloth.cli.pipeline")
                 for d in deps if not d.startswith(("dreamcloth.cli.pipeline", "dreamcloth.taichi_mpm", "dreamcloth.render",
                                                    "dreamcloth.prior")))
    assert bad == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_negative_control_a_module_cycle_is_found(tmp_path):
    # a imports b at module level; b imports a lazily, inside a function: still a cycle
    root = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from .a import g\n    return g\n",
        "c.py": "import pkg.a\n",
    })
    files = modules_of(root, "pkg")
    assert cycles(import_graph(files)) == [["pkg.a", "pkg.b"]]


def test_negative_control_a_package_cycle_is_found(tmp_path):
    # no module cycle, but package p uses q and q uses p
    root = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "p/__init__.py": "",
        "p/one.py": "from ..q.two import x\n",
        "p/three.py": "y = 1\n",
        "q/__init__.py": "",
        "q/two.py": "x = 1\ndef f():\n    from pkg.p import three\n",
    })
    files = modules_of(root, "pkg")
    graph = import_graph(files)
    assert cycles(graph) == []
    assert cycles(package_graph(graph, files)) == [["pkg.p", "pkg.q"]]


def test_negative_control_a_command_import_is_found():
    graph = {"dreamcloth.cli.pipeline.batch": {"dreamcloth.cli.fit_cmd"}, "dreamcloth.cli.app": {"dreamcloth.cli.fit_cmd"}}
    bad = sorted((m, d) for m, deps in graph.items() for d in deps if _is_command(d) and m != "dreamcloth.cli.app")
    assert bad == [("dreamcloth.cli.pipeline.batch", "dreamcloth.cli.fit_cmd")]
