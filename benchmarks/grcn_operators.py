"""GRCN's training step on its edge operators against the ones they replaced, in one process.

GRCN computes its per-edge dot products with ``torch.sparse.sampled_addmm`` and its row
normalisations with a fused backward (``alignrec/models/edge_values.py``). This times the same
model's training step with those and with what they replaced (``EdgeGraph.edge_dot``,
``EdgeGraph.matmul``, ``F.normalize``), alternating the two in rounds so that both see the
same machine load, and prints the medians and their ratio.

Usage: ``.venv/bin/python benchmarks/grcn_operators.py --dataset amazon-sports [--steps 5]``
"""

from __future__ import annotations

from ab import alternate, parse_args, setup


def main() -> None:
    args = parse_args(__doc__)
    bench = setup("grcn", args)

    from torch.nn import functional as F

    import alignrec.models.grcn as grcn

    operators = {
        "replaced": (
            lambda x: F.normalize(x, dim=1),
            lambda g, a, b: g.edge_dot(a, b),
            lambda g, v, x: g.matmul(x, v),
        ),
        "edge_values": (grcn.normalize_rows, grcn.sddmm, grcn.weighted_matmul),
    }

    def put(ops):
        def apply() -> None:
            grcn.normalize_rows, grcn.sddmm, grcn.weighted_matmul = ops

        return apply

    alternate(bench, {name: put(ops) for name, ops in operators.items()}, args, "GRCN")


if __name__ == "__main__":
    main()
