"""The library's layering: no library module imports the CLI, and the benchmark's report and
runner do not import each other (their shared types live in alignrec.benchmark.results)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "alignrec"
CLI = ("alignrec.commands", "alignrec.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included),
    relative imports resolved; ``from a import b`` counts as both ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _imports_of(paths: list[Path]) -> dict[Path, set[str]]:
    """:func:`_imports` of each path, parsed in a fresh interpreter: inside a long test session
    CPython 3.11's ``ast.parse`` can fail with "AST constructor recursion depth mismatch"
    (seen in CI after other tests ran), a state of the process, not of the files."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys; from pathlib import Path; from tests.test_layering import _imports; "
        "print(json.dumps({p: sorted(_imports(Path(p))) for p in sys.argv[1:]}))"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, *map(str, paths)],
        cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120, check=True,
    )
    return {Path(p): set(v) for p, v in json.loads(res.stdout).items()}


def _library_modules() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if "commands" not in p.relative_to(PACKAGE).parts[:1] and p != PACKAGE / "cli.py"
    ]


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_library_modules_do_not_import_the_cli():
    modules = _library_modules()
    assert PACKAGE / "runs.py" in modules and len(modules) > 20
    imports = _imports_of(modules)
    offenders = {
        _module_name(p): sorted(m for m in imports[p] if any(_is_under(m, c) for c in CLI))
        for p in modules
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_benchmark_report_and_runner_do_not_import_each_other():
    """One way only: the runner writes the report (runner -> report); the report reads the
    runs through alignrec.benchmark.results and alignrec.runs, never the runner."""
    bench = PACKAGE / "benchmark"
    found = _imports_of([bench / "report.py", bench / "runner.py"])
    report, runner = found[bench / "report.py"], found[bench / "runner.py"]
    assert not any(_is_under(m, "alignrec.benchmark.runner") for m in report)
    assert any(_is_under(m, "alignrec.benchmark.report") for m in runner)
    for module in (report, runner):
        assert "alignrec.benchmark.results" in module and "alignrec.runs" in module
