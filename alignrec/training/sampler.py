"""Uniform negative sampling that never draws one of the user's training items."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from alignrec.data.dataset import Dataset


class NegativeSampler:
    """Shuffles the training pairs each epoch and pairs each with one negative item.

    A negative is drawn uniformly from all items the user has *not* interacted with
    in training. Sampling is vectorised rejection: draw for everyone, then redraw
    only the draws that hit a training item, until none does. Membership is a
    binary search in the sorted keys ``user * n_items + item``.

    All randomness comes from the sampler's own ``torch.Generator``, so an epoch's
    batches depend only on the seed and the epoch count.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, max_rounds: int = 1000) -> None:
        train = np.asarray(dataset.train, dtype=np.int64).reshape(-1, 2)
        if len(train) == 0:
            raise ValueError("the training split is empty")
        self.n_items = int(dataset.n_items)
        self.pairs = torch.from_numpy(train.copy())
        keys = np.unique(train[:, 0] * self.n_items + train[:, 1])
        self._keys = torch.from_numpy(keys)
        per_user = np.bincount(keys // self.n_items, minlength=dataset.n_users)
        full = np.flatnonzero(per_user >= self.n_items)
        if len(full):
            raise ValueError(
                f"user(s) {full[:5].tolist()} interacted with every item; no negative can be drawn"
            )
        self.max_rounds = max_rounds
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.pairs)

    def is_train_item(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Boolean mask: is ``items[i]`` a training item of ``users[i]``."""
        q = users * self.n_items + items
        pos = torch.searchsorted(self._keys, q).clamp_(max=len(self._keys) - 1)
        return self._keys[pos] == q

    def sample_negatives(self, users: torch.Tensor) -> torch.Tensor:
        """One uniform non-training item per entry of ``users`` (CPU LongTensor)."""
        neg = torch.randint(self.n_items, users.shape, generator=self.generator)
        bad = torch.nonzero(self.is_train_item(users, neg)).flatten()
        rounds = 0
        while bad.numel():
            rounds += 1
            if rounds > self.max_rounds:
                raise RuntimeError("negative sampling did not converge; is the data nearly dense?")
            redraw = torch.randint(self.n_items, bad.shape, generator=self.generator)
            neg[bad] = redraw
            still = self.is_train_item(users[bad], redraw)
            bad = bad[still]
        return neg

    def epoch(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches (users, positives, negatives) covering every training pair once."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        order = torch.randperm(len(self.pairs), generator=self.generator)
        pairs = self.pairs[order]
        users, pos = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
        neg = self.sample_negatives(users)
        for start in range(0, len(pairs), batch_size):
            sl = slice(start, start + batch_size)
            yield users[sl], pos[sl], neg[sl]
