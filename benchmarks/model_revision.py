"""A model's training step with its module as it was at a git revision, against the working tree's.

The model's module (``alignrec/models/<model>.py``) at ``--rev`` is loaded beside the current
one; its imports resolve to the working tree's other modules, so this compares changes made
inside the model's own module (and helpers it newly imports), not changes to what both
import. The model is built once, by the current class (its submodules, such as branches, are
the current module's); the two forms swap its class, so both train the same parameters. This prints the first batch's loss with each and how far their gradients
differ, then times the training step with each, alternating them in rounds so that both
see the same machine load, and prints the medians and their ratio.

Usage: ``.venv/bin/python benchmarks/model_revision.py --model grcn --rev HEAD
[--dataset amazon-sports] [--steps 5]``
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

from ab import alternate, first_batch_agreement, parse_args, setup

ROOT = Path(__file__).resolve().parents[1]


def module_at(module: str, rev: str) -> types.ModuleType:
    """``module`` (dotted name of a file of this repository) as it was at ``rev``, loaded under
    another name."""
    path = module.replace(".", "/") + ".py"
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    old = types.ModuleType(f"{module}@{rev}")
    old.__file__ = str(ROOT / path)
    sys.modules[old.__name__] = old  # dataclasses look their module up while they are made
    exec(compile(source, f"{path}@{rev}", "exec"), old.__dict__)
    return old


def main() -> None:
    def add(parser) -> None:
        parser.add_argument("--model", required=True, help="registered model name")
        parser.add_argument("--rev", default="HEAD", help="git revision of the model's module")

    args = parse_args(__doc__, add)
    bench = setup(args.model, args)
    current = type(bench.net)
    old = getattr(module_at(current.__module__, args.rev), current.__name__)

    def put(cls):
        def apply() -> None:
            bench.net.__class__ = cls

        return apply

    puts = {args.rev: put(old), "working tree": put(current)}
    first_batch_agreement(bench, puts)
    alternate(bench, puts, args, current.__name__)


if __name__ == "__main__":
    main()
