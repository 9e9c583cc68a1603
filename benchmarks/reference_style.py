"""Same-machine baseline for ``alignrec bench-speed``: LightGCN done the MMRec way.

Re-implements (not copies) the reference toolbox's hot paths so that the speed-up
of this library is measured under the same load, not against quoted figures:

* negatives drawn one by one in Python, rejecting training items via a set;
* the normalised adjacency as a COO tensor, propagated with ``torch.sparse.mm``;
* evaluation recomputing the full propagation for every batch of users, masking
  train items, ``torch.topk``, then a Python membership test per ranked item and
  numpy metrics.

Usage: ``.venv/bin/python benchmarks/reference_style.py --dataset amazon-baby [--threads 2]``
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time

import numpy as np
import torch

from alignrec.data import load_dataset
from alignrec.models.base import normalized_adjacency, to_torch_sparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="amazon-baby")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--evals", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    random.seed(0)
    torch.manual_seed(0)
    n_u, n_i, d = ds.n_users, ds.n_items, 64
    adj = to_torch_sparse(normalized_adjacency(ds))
    user_emb = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_u, d)))
    item_emb = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_i, d)))
    opt = torch.optim.Adam([user_emb, item_emb], lr=1e-3)
    train = ds.train
    history: dict[int, set[int]] = {}
    for u, i in train.tolist():
        history.setdefault(u, set()).add(i)
    all_items = sorted({i for _, i in train.tolist()})

    def forward():
        x = torch.cat([user_emb, item_emb])
        layers = [x]
        for _ in range(2):
            x = torch.sparse.mm(adj, x)
            layers.append(x)
        out = torch.stack(layers, 1).mean(1)
        return out[:n_u], out[n_u:]

    epoch_s = []
    for _ in range(args.epochs + 1):
        t = time.perf_counter()
        order = np.random.permutation(len(train))
        for start in range(0, len(train), 2048):
            batch = train[order[start : start + 2048]]
            users, pos = batch[:, 0], batch[:, 1]
            neg = []
            for u in users.tolist():
                j = random.sample(all_items, 1)[0]
                while j in history[u]:
                    j = random.sample(all_items, 1)[0]
                neg.append(j)
            users, pos, neg = map(torch.as_tensor, (users, pos, np.array(neg)))
            ue, ie = forward()
            u, p, n = ue[users], ie[pos], ie[neg]
            mf = -torch.log(1e-10 + torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
            reg = (user_emb[users].norm() + item_emb[pos].norm() + item_emb[neg].norm()) / len(
                users
            )
            loss = mf + 1e-4 * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch_s.append(time.perf_counter() - t)

    valid = ds.matrix("valid")
    train_m = ds.matrix("train")
    eval_users = np.flatnonzero(np.diff(valid.indptr) > 0)
    pos_items = [set(valid.indices[valid.indptr[u] : valid.indptr[u + 1]]) for u in eval_users]
    eval_s = []
    for _ in range(args.evals + 1):
        t = time.perf_counter()
        tops = []
        with torch.no_grad():
            for start in range(0, len(eval_users), 4096):
                users = eval_users[start : start + 4096]
                ue, ie = forward()
                scores = ue[torch.as_tensor(users)] @ ie.T
                sub = train_m[users].tocoo()
                scores[sub.row, sub.col] = -1e10
                tops.append(torch.topk(scores, 50, dim=-1)[1])
        top = torch.cat(tops).numpy()
        hits = np.asarray([[i in m for i in row] for m, row in zip(pos_items, top, strict=True)])
        n_rel = np.array([len(m) for m in pos_items])
        _recall20 = (hits[:, :20].sum(1) / n_rel).mean()
        eval_s.append(time.perf_counter() - t)
    print(f"reference-style LightGCN on {args.dataset} ({torch.get_num_threads()} threads)")
    print(
        f"  train epoch     {statistics.median(epoch_s[1:]):.3f} s  (all: {', '.join(f'{x:.2f}' for x in epoch_s)})"
    )
    print(
        f"  full validation {statistics.median(eval_s[1:]):.3f} s  (all: {', '.join(f'{x:.2f}' for x in eval_s)})"
    )
    print(f"  peak RSS        {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"  valid recall@20 {_recall20:.4f}")


if __name__ == "__main__":
    main()
