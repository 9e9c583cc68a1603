"""SLMRec's training step with its ID pass and shared user part from one propagation, against two.

SLMRec's modality passes share the user part ``P [U; 0]``. ``SLMRec.id_pass_rows`` reads it
from the layers of the ID pass ``P [U; I]`` (the graph is bipartite,
``alignrec/models/layer_rows.py``); before, both were propagated side by side as one
2d-wide table. This checks that the two give the same loss and gradients on the first
batch, then times the training step with each, alternating them in rounds so that both see
the same machine load, and prints the medians and their ratio.

Usage: ``.venv/bin/python benchmarks/slmrec_passes.py --dataset amazon-sports [--steps 5]``
"""

from __future__ import annotations

from ab import alternate, first_batch_agreement, parse_args, setup


def main() -> None:
    args = parse_args(__doc__)
    bench = setup("slmrec", args)

    import torch

    from alignrec.models import SLMRec
    from alignrec.models.batch_rows import mean_propagation_rows

    def side_by_side(self: SLMRec, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The replaced form: [U; I] and [U; 0] propagated as one 2d-wide table."""
        x = torch.cat(
            [
                self.user_emb.repeat(1, 2),
                torch.cat([self.item_emb, torch.zeros_like(self.item_emb)], dim=1),
            ]
        )
        return mean_propagation_rows(self.adj, x, self.config.n_layers, nodes).chunk(2, dim=1)

    forms = {"side_by_side": side_by_side, "one_propagation": SLMRec.id_pass_rows}

    def put(form):
        def apply() -> None:
            SLMRec.id_pass_rows = form

        return apply

    puts = {name: put(form) for name, form in forms.items()}
    first_batch_agreement(bench, puts)
    alternate(bench, puts, args, "SLMRec")


if __name__ == "__main__":
    main()
