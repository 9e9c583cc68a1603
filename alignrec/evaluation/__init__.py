"""Full-ranking evaluation and top-K metrics (alignrec.md §4)."""

from alignrec.evaluation.evaluator import (
    DEFAULT_KS,
    EvalResult,
    Evaluator,
    canonical_topk,
    evaluate,
    evaluate_scores,
)
from alignrec.evaluation.metrics import METRICS, per_user_metrics

__all__ = [
    "DEFAULT_KS",
    "METRICS",
    "EvalResult",
    "Evaluator",
    "canonical_topk",
    "evaluate",
    "evaluate_scores",
    "per_user_metrics",
]
