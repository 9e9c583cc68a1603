"""How hard is stage 1's pretext task? The model's predictions against interpolation.

A mask-then-predict objective teaches alignment only if the masked targets cannot be
read off what stays visible in the same modality. :func:`pretext_check` masks items as
training does (same ratios, block-wise patches, fixed seed) and scores, for each target:

- ``mim`` (masked patches): the model's prediction against the mean of the patch's
  visible 4-neighbours in the grid (the item's visible patches when none is);
- ``mlm`` (masked text tokens): the model against the mean of the item's visible tokens;
- ``recon:<modality>`` (a whole modality removed, predicted from the others): the model
  against the modality's mean vector, which scores 0 on the centred target;
- ``mvm:<name>`` (a masked precomputed vector): the model against the mean vector.

Regression targets are scored by cosine, discrete ones (token ids, patch codes) by
accuracy (the interpolation's code, or the most frequent token id). A model that does
not beat interpolation on some target is *flagged*: its pretext task teaches nothing
that copying the neighbours would not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alignrec.features.cache import EncoderOutputs
from alignrec.features.fusion import (
    IMAGE,
    TEXT,
    FusionEncoder,
    _codes,
    _uniform,
    collate,
    draw_masks,
    fit_codebook,
    reconstruction_cosines,
)


@dataclass(frozen=True)
class PretextScore:
    """One pretext target: the model's score and the interpolation baseline's.

    Attributes:
        target: ``mim``, ``mlm``, ``recon:<modality>`` or ``mvm:<name>``.
        metric: ``cosine`` or ``accuracy``.
        model: the model's mean score over the masked targets.
        interpolation: the baseline's mean score on the same targets.
        baseline: what the baseline predicts.
        n: number of masked targets scored.
    """

    target: str
    metric: str
    model: float
    interpolation: float
    baseline: str
    n: int

    @property
    def beats_interpolation(self) -> bool:
        return self.model > self.interpolation

    def to_dict(self) -> dict:
        return {**asdict(self), "beats_interpolation": self.beats_interpolation}


def flagged(scores: list[PretextScore]) -> list[str]:
    """The targets on which the model does not beat interpolation."""
    return [s.target for s in scores if not s.beats_interpolation]


def pretext_metrics(scores: list[PretextScore]) -> dict[str, float]:
    """Flat metrics for a tracker: ``pretext/<target>/model`` and ``.../interpolation``,
    plus ``pretext/flagged`` (1.0 when some target does not beat interpolation)."""
    out: dict[str, float] = {}
    for s in scores:
        key = s.target.replace(":", "_")
        out[f"pretext/{key}/model"] = s.model
        out[f"pretext/{key}/interpolation"] = s.interpolation
    out["pretext/flagged"] = float(bool(flagged(scores)))
    return out


def format_pretext(scores: list[PretextScore]) -> str:
    """A plain-text table of the scores, one target a line, flags marked."""
    lines = [f"{'target':<18} {'metric':<9} {'model':>7} {'interp.':>7}  n      baseline"]
    for s in scores:
        mark = "" if s.beats_interpolation else "  <- FLAG: does not beat interpolation"
        lines.append(
            f"{s.target:<18} {s.metric:<9} {s.model:7.4f} {s.interpolation:7.4f}  "
            f"{s.n:<6} {s.baseline}{mark}"
        )
    return "\n".join(lines)


def _neighbour_mean(patches: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """[B, P, D]: mean of each patch's visible 4-neighbours in the square grid (the mean of
    the item's visible patches where no neighbour is visible)."""
    b, p, d = patches.shape
    side = int(round(p**0.5))
    visible = (~masked).to(patches.dtype)
    if side * side != p:
        nb_sum = torch.zeros_like(patches)
        nb_cnt = torch.zeros(b, p, 1, dtype=patches.dtype, device=patches.device)
    else:
        x = (patches * visible[..., None]).reshape(b, side, side, d)
        v = visible.reshape(b, side, side, 1)
        nb_sum, nb_cnt = torch.zeros_like(x), torch.zeros_like(v)
        for dim, shift in ((1, 1), (1, -1), (2, 1), (2, -1)):
            nb_sum = nb_sum + _shift(x, dim, shift)
            nb_cnt = nb_cnt + _shift(v, dim, shift)
        nb_sum, nb_cnt = nb_sum.reshape(b, p, d), nb_cnt.reshape(b, p, 1)
    item_mean = (patches * visible[..., None]).sum(1, keepdim=True) / visible.sum(
        1, keepdim=True
    ).clamp_min(1)[..., None]
    return torch.where(nb_cnt > 0, nb_sum / nb_cnt.clamp_min(1), item_mean.expand(b, p, d))


def _shift(x: torch.Tensor, dim: int, shift: int) -> torch.Tensor:
    """``x`` moved by one cell along ``dim``, zero-filled (no wrap-around)."""
    out = torch.zeros_like(x)
    n = x.shape[dim]
    src = x.narrow(dim, 0, n - 1) if shift > 0 else x.narrow(dim, 1, n - 1)
    out.narrow(dim, 1, n - 1).copy_(src) if shift > 0 else out.narrow(dim, 0, n - 1).copy_(src)
    return out


class _Acc:
    """Running sums of the model's and the baseline's scores for one target."""

    def __init__(self) -> None:
        self.model = self.interp = 0.0
        self.n = 0

    def add(self, model: torch.Tensor, interp: torch.Tensor) -> None:
        self.model += float(model.float().sum())
        self.interp += float(interp.float().sum())
        self.n += int(model.numel())


@torch.no_grad()
def pretext_check(
    model: FusionEncoder,
    outputs: EncoderOutputs,
    *,
    seed: int = 0,
    max_items: int = 1024,
    batch_size: int = 64,
) -> list[PretextScore]:
    """Score the model's pretext predictions against interpolation on up to ``max_items``
    items (a seeded sample), masked as in training."""
    cfg = model.config
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    n = outputs.n_items
    items = np.sort(rng.permutation(n)[: min(max_items, n)])
    gen = torch.Generator().manual_seed(seed)
    book = fit_codebook(outputs, cfg) if cfg.image_target == "codes" else None
    centres = tuple(torch.from_numpy(a).to(device) for a in book) if book is not None else None
    vec_means = {
        k: torch.from_numpy(np.asarray(v, np.float32).mean(0)).to(device)
        for k, v in outputs.vectors.items()
    }
    acc: dict[str, _Acc] = {}
    token_ids: list[torch.Tensor] = []
    token_hits: list[torch.Tensor] = []
    try:
        for start in range(0, len(items), batch_size):
            idx = items[start : start + batch_size]
            batch = collate(outputs, idx, max_text_tokens=cfg.max_text_tokens).to(device)
            text_masked, image_masked = draw_masks(model, batch, gen)
            vector_masked = {
                k: (_uniform(len(idx), gen, device) < cfg.vector_mask_ratio) & present
                for k, present in batch.vector_mask.items()
            }
            states, _, where = model(batch, text_masked, image_masked, vector_masked)
            if IMAGE in where and image_masked is not None and image_masked.any():
                pred = model.heads["mim"](states[:, where[IMAGE]][image_masked])
                target = batch.image[image_masked]
                interp = _neighbour_mean(batch.image, image_masked)[image_masked]
                if cfg.image_target == "codes":
                    code = _codes(target, centres)
                    scores = (pred.argmax(-1) == code, _codes(interp, centres) == code)
                else:
                    scores = (
                        F.cosine_similarity(pred, target, dim=-1),
                        F.cosine_similarity(interp, target, dim=-1),
                    )
                acc.setdefault("mim", _Acc()).add(*scores)
            if TEXT in where and text_masked is not None and text_masked.any():
                pred = model.heads["mlm"](states[:, where[TEXT]][text_masked])
                visible = (batch.text_mask & ~text_masked).to(batch.text.dtype)[..., None]
                sent = (batch.text * visible).sum(1) / visible.sum(1).clamp_min(1)
                rows = text_masked.nonzero()[:, 0]
                if cfg.text_target == "ids":
                    ids = batch.text_ids[text_masked]
                    token_ids.append(ids.cpu())
                    token_hits.append((pred.argmax(-1) == ids).cpu())
                else:
                    target = batch.text[text_masked]
                    acc.setdefault("mlm", _Acc()).add(
                        F.cosine_similarity(pred, target, dim=-1),
                        F.cosine_similarity(sent[rows], target, dim=-1),
                    )
            for name, flags in vector_masked.items():
                key = f"vec:{name}"
                if key in where and flags.any():
                    pred = model.heads[f"mvm_{name}"](states[:, where[key].start][flags])
                    target = batch.vectors[name][flags]
                    acc.setdefault(f"mvm:{name}", _Acc()).add(
                        F.cosine_similarity(pred, target, dim=-1),
                        F.cosine_similarity(vec_means[name].expand_as(target), target, dim=-1),
                    )
        if model.reconstructs:
            for m, (cos, count) in reconstruction_cosines(model, outputs, items).items():
                acc[f"recon:{m}"] = _Acc()
                acc[f"recon:{m}"].model, acc[f"recon:{m}"].n = cos * count, count
    finally:
        model.train(was_training)
    baselines = {
        "mim": "code of the mean of the visible neighbour patches"
        if cfg.image_target == "codes"
        else "mean of the visible neighbour patches",
        "mlm": "mean of the item's visible tokens",
    }
    out = []
    for target, a in acc.items():
        if a.n == 0:
            continue
        metric = "accuracy" if target == "mim" and cfg.image_target == "codes" else "cosine"
        base = baselines.get(target, "the mean vector")
        out.append(PretextScore(target, metric, a.model / a.n, a.interp / a.n, base, a.n))
    if token_ids:
        ids, hits = torch.cat(token_ids), torch.cat(token_hits)
        common = torch.bincount(ids).argmax()
        out.append(
            PretextScore(
                "mlm",
                "accuracy",
                float(hits.float().mean()),
                float((ids == common).float().mean()),
                "the most frequent masked token id",
                int(len(ids)),
            )
        )
    return sorted(out, key=lambda s: s.target)
