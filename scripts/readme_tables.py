"""Fill the README's generated blocks from the stored results, so no table is typed by hand.

A block is written as::

    <!-- generated from results/stage1-sweep/movielens-100k-mm/sweep.md -->
    ... (replaced by the file's content, its first heading dropped) ...
    <!-- end generated -->

``python scripts/readme_tables.py`` rewrites README.md in place; ``--check`` only reports
(exit 1) a block that differs from its file. The test suite runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(
    r"(<!-- generated from (?P<src>\S+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S
)


def body_of(src: Path) -> str:
    """A results file as it appears in the README: its top heading dropped."""
    lines = src.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip("\n") + "\n"


def mask_modality_table(folder: Path) -> str | None:
    """A markdown table of the ``mask-modality-*.json`` results of ``alignrec evaluate-features
    --protocol mask-modality --out`` in ``folder`` (None when there are none)."""
    import json

    files = sorted(folder.glob("mask-modality-*.json"))
    if not files:
        return None
    lines = [
        "| features | removed | zero-shot valid R@20 (full -> masked) | loss | "
        "item-CF valid R@20 (full -> masked) | loss |",
        "|---|---|---|---|---|---|",
    ]
    for f in files:
        r = json.loads(f.read_text())
        cells = []
        for proto in ("zero-shot", "item-cf"):
            k = f"{proto}/valid/recall@20"
            cells += [f"{r['unmasked'][k]:.4f} -> {r['metrics'][k]:.4f}",
                      f"{100 * r['relative_loss'][k]:.1f}%"]
        name = f.stem.removeprefix("mask-modality-")
        removed = f"{r['modality']} from {100 * r['fraction']:.0f}% of items"
        lines.append(f"| {name} | {removed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def derive(root: Path = ROOT) -> None:
    """Regenerate the markdown tables derived from JSON records under ``results/``."""
    for folder in sorted((root / "results" / "stage1").glob("*")):
        table = mask_modality_table(folder)
        if table is not None:
            (folder / "mask-modality.md").write_text(
                f"# Mask-modality on {folder.name}\n\n{table}", encoding="utf-8"
            )


def render(readme: str, root: Path = ROOT) -> str:
    """The README with every generated block replaced by its file's content."""

    def fill(m: re.Match) -> str:
        src = root / m.group("src")
        if not src.is_file():
            raise SystemExit(f"README.md: generated block names {m.group('src')}, which is missing")
        return m.group(1) + body_of(src) + m.group(4)

    return BLOCK.sub(fill, readme)


def uncommitted(readme: str, root: Path = ROOT) -> list[str]:
    """The blocks' source files that git reports as changed or untracked in ``root``: a README
    regenerated from them passes here and fails on a clean clone until they are committed too."""
    import subprocess

    sources = sorted({m.group("src") for m in BLOCK.finditer(readme)})
    if not sources:
        return []
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", *sources],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []  # not a git work tree: nothing to compare with
    return sorted(line[3:].strip() for line in out.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks, change nothing")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    if not args.check:
        derive()
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print("README.md: generated blocks differ from results/; run scripts/readme_tables.py")
            return 1
        return 0
    if new != text:
        path.write_text(new, encoding="utf-8")
        print("README.md: generated blocks updated")
    for src in uncommitted(new):
        print(f"README.md: {src} is not committed; commit it with the README")
    return 0


if __name__ == "__main__":
    sys.exit(main())
