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


def render(readme: str, root: Path = ROOT) -> str:
    """The README with every generated block replaced by its file's content."""

    def fill(m: re.Match) -> str:
        src = root / m.group("src")
        if not src.is_file():
            raise SystemExit(f"README.md: generated block names {m.group('src')}, which is missing")
        return m.group(1) + body_of(src) + m.group(4)

    return BLOCK.sub(fill, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks, change nothing")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
