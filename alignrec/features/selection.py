"""Choosing stage-1 settings and stage 2's features, on validation only.

Two decisions are made here, both by one documented rule (:func:`selection_score`):

- **Stage-1 settings** (:func:`run_sweep`): a small set of fusion settings
  (:data:`SWEEP`) is trained, each readout weight in :data:`FUSED_WEIGHTS` is read off
  every trained encoder, and every result is scored on the validation split.
- **Stage 2's features** (:func:`choose_features`): the stage-1 features compete with
  every raw feature set of the dataset; stage 2 receives the winner. On a dataset
  where stage 1 adds nothing measurable (one modality, say), this hands stage 2 the
  better raw set instead, and says so.

The rule: the mean of validation Recall@20 under the zero-shot and the item-CF
protocols (docs §5); ties keep the earlier candidate (stage 1 first). The test split
is never read here.

Where the dataset declares item labels (``labels:`` in its YAML, movielens' 19 genre
flags), :func:`label_probe` adds a cross-validated linear probe over items, reported
beside the rule's score but not part of it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignrec.features.sets import check_table, l2_normalize

log = logging.getLogger(__name__)

RULE = (
    "among the candidates that score at least the best raw set's validation Recall@20 under "
    "both zero-shot and item-CF, the highest mean of the two; when none does, the highest mean "
    "(ties: the earlier candidate)"
)

# The stage-1 sweep: named FusionConfig overrides on top of the base config. Training length
# is what the pretext-difficulty analysis pointed at (220 optimiser steps on movielens); the
# readout weight of the fused vector is swept on every trained encoder (FUSED_WEIGHTS).
SWEEP: dict[str, dict[str, Any]] = {
    "base": {"epochs": 10, "min_steps": 0},  # the defaults before: 220 steps on movielens
    # about 660 optimiser steps on any catalogue (30 epochs on movielens, 3 on Sports)
    "steps660": {"epochs": 3, "min_steps": 660},
}
# Readout weights of the fused vector scored for every trained encoder (no retraining).
FUSED_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
# Shares of each modality's mean removed in the residual readout, scored as candidates for
# stage 2 (no retraining): 1 is the trained readout (``stage1``), the others are named
# ``stage1:centre=<share>``.
READOUT_CENTRES: tuple[float, ...] = (1.0, 0.5, 0.0)
RAW_PREFIX = "raw:"


@dataclass(frozen=True)
class FeatureScore:
    """One candidate feature table scored on validation.

    Attributes:
        name: the candidate (``stage1``, ``raw:concat``, a sweep point ...).
        zero_shot: validation Recall@20 of the zero-shot protocol.
        item_cf: validation Recall@20 of the item-CF protocol.
        probe: mean ROC-AUC of the label probe, None without labels.
    """

    name: str
    zero_shot: float
    item_cf: float
    probe: float | None = None

    @property
    def score(self) -> float:
        """The selection rule's value (see :data:`RULE`)."""
        return selection_score(self.zero_shot, self.item_cf)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "score": self.score}


def selection_score(zero_shot: float, item_cf: float) -> float:
    """The rule: the mean of the two validation Recall@20 values."""
    return 0.5 * (zero_shot + item_cf)


def score_on_validation(
    dataset, table: np.ndarray, name: str, labels: np.ndarray | None = None
) -> FeatureScore:
    """Validation Recall@20 of a table under zero-shot and item-CF (and the label probe)."""
    from alignrec.features.protocols import item_cf, zero_shot

    table = check_table(table, dataset.n_items, name)
    zs = zero_shot(dataset, table, splits=("valid",), ks=(20,)).metrics["valid/recall@20"]
    cf = item_cf(dataset, table, splits=("valid",), ks=(20,)).metrics["valid/recall@20"]
    probe = label_probe(table, labels) if labels is not None else None
    return FeatureScore(name, float(zs), float(cf), probe)


def label_probe(table: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Mean ROC-AUC over labels of a logistic-regression probe, cross-validated over items.

    Each fold fits one probe per label on L2-normalised features of the other folds and
    scores the held-out items; labels with fewer than 5 positive items are left out.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import KFold

    x = l2_normalize(table)
    y = np.asarray(labels, dtype=np.int64)
    keep = [j for j in range(y.shape[1]) if 5 <= y[:, j].sum() < len(y)]
    scores = np.zeros((len(y), len(keep)))
    for train, held in KFold(folds, shuffle=True, random_state=seed).split(x):
        for c, j in enumerate(keep):
            target = y[train, j]
            if 0 < target.sum() < len(target):
                fit = LogisticRegression(C=1.0, max_iter=2000).fit(x[train], target)
                scores[held, c] = fit.decision_function(x[held])
    return float(np.mean([roc_auc_score(y[:, j], scores[:, c]) for c, j in enumerate(keep)]))


@dataclass
class Choice:
    """Which feature table stage 2 receives, and why.

    Attributes:
        chosen: the winning candidate's name.
        scores: every candidate's scores, in the order given.
        rule: the rule that chose.
    """

    chosen: str
    scores: list[FeatureScore]
    rule: str = RULE

    @property
    def stage1_chosen(self) -> bool:
        """Whether stage 2 reads a stage-1 readout (``stage1`` or a centring variant)."""
        return self.chosen.startswith("stage1")

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "rule": self.rule,
                "scores": [s.to_dict() for s in self.scores]}

    def table(self) -> str:
        """The candidates' validation scores as markdown, the winner marked, the rule below."""
        lines = ["| features | zero-shot valid R@20 | item-CF valid R@20 | score |",
                 "|---|---|---|---|"]
        for s in self.scores:
            name = f"**{s.name}** (stage 2 reads it)" if s.name == self.chosen else s.name
            lines.append(f"| {name} | {s.zero_shot:.4f} | {s.item_cf:.4f} | {s.score:.4f} |")
        return "\n".join(lines) + f"\n\nRule: {self.rule}."

    def metrics(self) -> dict[str, float]:
        """Each candidate's rule value as a tracking metric, ``select/<name>/score``, the name
        spelled with what MLflow accepts in a key (``stage1:centre=0.5`` ->
        ``stage1_centre_0.5``)."""
        return {f"select/{re.sub(r'[^0-9A-Za-z_.-]', '_', s.name)}/score": s.score
                for s in self.scores}

    def summary(self) -> str:
        """One line for logs, metadata and reports."""
        best = next(s for s in self.scores if s.name == self.chosen)
        others = ", ".join(f"{s.name} {s.score:.4f}" for s in self.scores if s.name != self.chosen)
        return (f"stage 2 reads {self.chosen} (validation score {best.score:.4f}; "
                f"{others}; rule: {self.rule})")


def choose_features(
    dataset, candidates: dict[str, np.ndarray], labels: np.ndarray | None = None
) -> Choice:
    """Score every candidate on validation and pick one by :data:`RULE`."""
    if not candidates:
        raise ValueError("choose_features needs at least one candidate")
    scores = [score_on_validation(dataset, t, n, labels) for n, t in candidates.items()]
    choice = Choice(pick(scores), scores)
    log.info("%s", choice.summary())
    return choice


def pick(scores: list[FeatureScore]) -> str:
    """The candidate :data:`RULE` chooses: the best mean among those at least as good as the
    best raw set (names starting ``raw:``) on both protocols, else the best mean."""
    raw = [s for s in scores if s.name.startswith(RAW_PREFIX)]
    eligible = list(range(len(scores)))
    if raw:
        zs, icf = max(s.zero_shot for s in raw), max(s.item_cf for s in raw)
        dominant = [i for i, s in enumerate(scores) if s.zero_shot >= zs and s.item_cf >= icf]
        eligible = dominant or eligible
    return scores[max(eligible, key=lambda i: (scores[i].score, -i))].name


def readout_candidates(model, features: np.ndarray) -> dict[str, np.ndarray]:
    """The stage-1 features under each share of :data:`READOUT_CENTRES`: ``stage1`` as
    trained, ``stage1:centre=<share>`` for the others (a residual readout only)."""
    out = {"stage1": features}
    if getattr(model.config, "readout", None) != "residual":
        return out
    for share in READOUT_CENTRES:
        if share != 1.0:
            out[f"stage1:centre={share:g}"] = features + model.centring_offset(share)
    return out


def raw_candidates(outputs) -> dict[str, np.ndarray]:
    """Every raw feature set of the encoder outputs: ``raw:concat`` (with two or more
    modalities) and each modality alone."""
    from alignrec.features.sets import raw_concat, raw_part, raw_parts

    parts = raw_parts(outputs)
    out: dict[str, np.ndarray] = {}
    if len(parts) > 1:
        out["raw:concat"] = raw_concat(outputs)
    for p in parts:
        out[f"raw:{p.removeprefix('vec:')}"] = raw_part(outputs, p)
    return out


@dataclass
class SweepPoint:
    """One trained setting of the sweep, scored at every readout weight."""

    name: str
    overrides: dict[str, Any]
    train_seconds: float
    scores: dict[str, FeatureScore] = field(default_factory=dict)  # fused_weight -> score
    pretext_flagged: list[str] = field(default_factory=list)

    def best(self) -> tuple[str, FeatureScore]:
        return max(self.scores.items(), key=lambda kv: kv[1].score)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "overrides": self.overrides,
                "train_seconds": self.train_seconds, "pretext_flagged": self.pretext_flagged,
                "scores": {w: s.to_dict() for w, s in self.scores.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepPoint:
        scores = {w: FeatureScore(**{k: v for k, v in s.items() if k != "score"})
                  for w, s in d["scores"].items()}
        return cls(d["name"], d["overrides"], d["train_seconds"], scores,
                   d.get("pretext_flagged", []))


def run_sweep(
    dataset,
    outputs,
    base: dict[str, Any],
    out_dir: str | Path,
    *,
    settings: dict[str, dict[str, Any]] | None = None,
    fused_weights: tuple[float, ...] = FUSED_WEIGHTS,
    labels: np.ndarray | None = None,
    device: str = "cpu",
    on_point: Callable[[SweepPoint], None] | None = None,
) -> list[SweepPoint]:
    """Train each sweep setting, score every readout weight on validation, keep the results.

    Each finished point is written to ``out_dir/<name>.json`` (atomically) before the next
    starts, and a point whose file exists with the same resolved config is reused, so an
    interrupted sweep resumes where it stopped.
    """
    from alignrec.features.fusion import FusionConfig, encode_items, pretrain_fusion
    from alignrec.features.pretext import flagged, pretext_check
    from alignrec.io import write_json

    out_dir = Path(out_dir)
    points = []
    for name, overrides in (settings or SWEEP).items():
        config = FusionConfig.from_dict({**base, **overrides})
        resolved = _training_key(config.to_dict())
        file = out_dir / f"{name}.json"
        if file.is_file():
            saved = json.loads(file.read_text())
            if _training_key(saved.get("config", {})) == resolved:
                point = SweepPoint.from_dict(saved)
                log.info("sweep %s: reused %s", name, file)
                points.append(point)
                if on_point:
                    on_point(point)
                continue
        t0 = time.perf_counter()
        model = pretrain_fusion(outputs, config, device=device).model
        seconds = time.perf_counter() - t0
        point = SweepPoint(name, overrides, seconds,
                           pretext_flagged=flagged(pretext_check(model, outputs)))
        for w in fused_weights:
            model.config.fused_weight = w
            label = f"{name} fused {w:g}"
            point.scores[f"{w:g}"] = score_on_validation(
                dataset, encode_items(model, outputs), label, labels
            )
        write_json(file, {**point.to_dict(), "config": config.to_dict()})
        points.append(point)
        if on_point:
            on_point(point)
    return points


# Settings that do not change what is trained: the thread count, and the readout weights
# (each point is scored at every weight in FUSED_WEIGHTS anyway).
_NOT_TRAINING = ("num_threads", "raw_weight", "fused_weight")


def _training_key(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _NOT_TRAINING}


def best_setting(points: list[SweepPoint]) -> tuple[SweepPoint, str]:
    """The sweep's winner by :data:`RULE`: its point and fused readout weight."""
    best = max(points, key=lambda p: p.best()[1].score)
    return best, best.best()[0]


def sweep_table(points: list[SweepPoint], references: list[FeatureScore]) -> str:
    """A markdown table of every point and readout weight, references (raw sets) first."""
    has_probe = any(s.probe is not None for p in points for s in p.scores.values()) or any(
        r.probe is not None for r in references
    )
    head = "| features | zero-shot R@20 | item-CF R@20 | score |" + (
        " genre probe AUC |" if has_probe else ""
    ) + " train s | pretext flags |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def row(name: str, s: FeatureScore, secs: str, flags: str) -> str:
        probe = f" {s.probe:.4f} |" if has_probe and s.probe is not None else (
            " - |" if has_probe else "")
        return (f"| {name} | {s.zero_shot:.4f} | {s.item_cf:.4f} | {s.score:.4f} |"
                f"{probe} {secs} | {flags} |")

    for r in references:
        lines.append(row(r.name, r, "", ""))
    winner, weight = best_setting(points) if points else (None, None)
    for p in points:
        for w, s in p.scores.items():
            name = f"{p.name}, fused weight {w}"
            if p is winner and w == weight:
                name = f"**{name}** (chosen)"
            lines.append(row(name, s, f"{p.train_seconds:.0f}", ", ".join(p.pretext_flagged)))
    return "\n".join(lines)
