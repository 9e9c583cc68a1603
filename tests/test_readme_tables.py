"""The README's result tables are generated from results/, never typed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts/readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_readme_blocks_equal_their_results_files():
    mod = _module()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert mod.BLOCK.search(text), "the README has no generated block"
    assert mod.render(text) == text, "run: python scripts/readme_tables.py"


def test_a_block_is_replaced_by_its_file_without_the_heading(tmp_path):
    mod = _module()
    (tmp_path / "r.md").write_text("# Title\n\n| a |\n|---|\n| 1 |\n")
    readme = "x\n<!-- generated from r.md -->\nstale\n<!-- end generated -->\ny\n"
    out = mod.render(readme, tmp_path)
    assert out == "x\n<!-- generated from r.md -->\n| a |\n|---|\n| 1 |\n<!-- end generated -->\ny\n"
    assert mod.render(out, tmp_path) == out


def test_sources_not_committed_are_named(tmp_path):
    import subprocess

    mod = _module()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.md").write_text("| a |\n")
    (tmp_path / "b.md").write_text("| b |\n")
    subprocess.run([*git, "add", "a.md", "b.md"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    readme = "".join(f"<!-- generated from {n} -->\n<!-- end generated -->\n" for n in ("a.md", "b.md", "c.md"))
    assert mod.uncommitted(readme, tmp_path) == []
    (tmp_path / "b.md").write_text("| b2 |\n")
    (tmp_path / "c.md").write_text("| c |\n")
    assert mod.uncommitted(readme, tmp_path) == ["b.md", "c.md"]
