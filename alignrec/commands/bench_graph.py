"""``alignrec bench-graph``: time and peak memory of building AlignRec's item-item graph.

The reference builds a dense I x I similarity matrix (about 16 GB at Electronics'
63,001 items); this builds it in row blocks. Random features stand in for real
ones: the cost depends only on the shape.
"""

from __future__ import annotations

import time

import typer


def bench_graph(items: int, dim: int, k: int = 10, block_size: int | None = None, seed: int = 0) -> dict:
    import numpy as np

    from alignrec.commands.bench import peak_rss_mib
    from alignrec.models.alignrec import item_item_graph

    before = peak_rss_mib()
    feats = np.random.default_rng(seed).standard_normal((items, dim), dtype=np.float32)
    t = time.perf_counter()
    graph = item_item_graph(feats, k=k, block_size=block_size)
    seconds = time.perf_counter() - t
    return {
        "items": items,
        "dim": dim,
        "k": k,
        "seconds": seconds,
        "nnz": int(graph.nnz),
        "features_mib": feats.nbytes / 2**20,
        "dense_matrix_mib": items * items * 4 / 2**20,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_before_mib": before,
    }


def bench_graph_command(
    items: int = typer.Option(63001, help="number of items (Electronics: 63,001)"),
    dim: int = typer.Option(768, help="feature dimension"),
    k: int = typer.Option(10, help="neighbours per item"),
    block_size: int = typer.Option(0, help="rows per block (0: sized for ~64 MB blocks)"),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default)"),
) -> None:
    """Print the time and peak memory of building the item-item graph in row blocks."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    r = bench_graph(items, dim, k, block_size or None)
    typer.echo(f"item-item graph: {r['items']:,} items x {r['dim']}-d, top-{r['k']} ({torch.get_num_threads()} threads)")
    typer.echo(f"  build time      {r['seconds']:.1f} s")
    typer.echo(f"  peak RSS        {r['peak_rss_mib']:.0f} MiB (process, features {r['features_mib']:.0f} MiB included)")
    typer.echo(f"  dense I x I     {r['dense_matrix_mib']:.0f} MiB would be needed by the reference")
    typer.echo(f"  edges           {r['nnz']:,}")
