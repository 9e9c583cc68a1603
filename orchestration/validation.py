"""Great Expectations suites over the raw and canonical tables.

Each suite is a list of expectations over one pandas frame. ``run_suite``
validates with an ephemeral context and returns what failed, with examples, in
a form the Dagster checks show as metadata.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd


@dataclass
class SuiteOutcome:
    """The result of one suite: success, counts, and the failed expectations with examples."""

    name: str
    success: bool
    evaluated: int
    failed: list[dict] = field(default_factory=list)

    def as_markdown(self) -> str:
        if not self.failed:
            return f"All {self.evaluated} expectations of `{self.name}` passed."
        lines = ["| expectation | column(s) | unexpected | examples |", "|---|---|---|---|"]
        for f in self.failed:
            lines.append(
                f"| {f['expectation']} | {f['column']} | {f['unexpected_count']} | {f['examples']} |"
            )
        return "\n".join(lines)


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx


def run_suite(name: str, frame: pd.DataFrame, expectations: list) -> SuiteOutcome:
    """Validate ``frame`` against ``expectations`` (GX expectation objects)."""
    import great_expectations as gx

    ctx = _context()
    for store, key in ((ctx.validation_definitions, name), (ctx.suites, name)):
        with contextlib.suppress(Exception):  # not there yet
            store.delete(key)
    source = ctx.data_sources.add_or_update_pandas(f"src-{name}")
    try:
        asset = source.get_asset(name)
    except LookupError:
        asset = source.add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(f"batch-{name}-{id(frame)}")
    suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    vdef = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    result = vdef.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
    failed = []
    for r in result.results:
        if r.success:
            continue
        kw = r.expectation_config.kwargs
        failed.append(
            {
                "expectation": r.expectation_config.type,
                "column": kw.get("column") or ", ".join(kw.get("column_list", []) or [])
                or f"{kw.get('column_A')}, {kw.get('column_B')}",
                "unexpected_count": r.result.get("unexpected_count", r.result.get("observed_value")),
                "examples": str(r.result.get("partial_unexpected_list", [])[:5]),
            }
        )
    stats = result.statistics
    return SuiteOutcome(name, bool(result.success), int(stats["evaluated_expectations"]), failed)


# ----------------------------------------------------------------------- suites


def raw_interactions_suite(frame: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    import great_expectations.expectations as gxe

    exps = [
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="user_id", min_value=1),
        gxe.ExpectColumnValueLengthsToBeBetween(column="item_id", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "valid", "test"],
                                        mostly=1.0),
    ]
    return frame, exps


def canonical_interactions_suite(frame: pd.DataFrame, n_users: int, n_items: int) -> tuple[pd.DataFrame, list]:
    """Ids in range, labels valid, no repeated pair within a split, no eval pair in train,
    every eval user in train."""
    import great_expectations.expectations as gxe

    train = frame[frame["split"] == "train"]
    train_pairs = pd.MultiIndex.from_frame(train[["user", "item"]])
    is_eval = (frame["split"] != "train").to_numpy()
    pair = frame["user"].astype(str) + ":" + frame["item"].astype(str) + " (" + frame["split"].astype(str) + ")"
    leaked = is_eval & pd.MultiIndex.from_frame(frame[["user", "item"]]).isin(train_pairs)
    orphan = is_eval & ~frame["user"].isin(set(train["user"])).to_numpy()
    derived = frame.assign(
        eval_pair_also_in_train=pair.where(leaked, None),
        eval_user_not_in_train=frame["user"].astype(str).where(orphan, None),
    )
    exps = [
        gxe.ExpectColumnValuesToNotBeNull(column="user"),
        gxe.ExpectColumnValuesToNotBeNull(column="item"),
        gxe.ExpectColumnValuesToBeBetween(column="user", min_value=0, max_value=n_users - 1),
        gxe.ExpectColumnValuesToBeBetween(column="item", min_value=0, max_value=n_items - 1),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "valid", "test"]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user", "item", "split"]),
        gxe.ExpectColumnValuesToBeNull(column="eval_pair_also_in_train"),
        gxe.ExpectColumnValuesToBeNull(column="eval_user_not_in_train"),
    ]
    return derived, exps


def features_suite(features: dict, n_items: int) -> tuple[pd.DataFrame, list]:
    """One row per modality: rows must equal the item count, and no value may be non-finite."""
    import great_expectations.expectations as gxe
    import numpy as np

    frame = pd.DataFrame(
        [
            {
                "modality": m,
                "rows": int(a.shape[0]),
                "expected_rows": n_items,
                "dims": int(a.shape[1]) if a.ndim == 2 else -1,
                "non_finite": int((~np.isfinite(a)).sum()),
            }
            for m, a in features.items()
        ],
        columns=["modality", "rows", "expected_rows", "dims", "non_finite"],
    )
    exps = [
        gxe.ExpectColumnPairValuesToBeEqual(column_A="rows", column_B="expected_rows"),
        gxe.ExpectColumnValuesToBeBetween(column="non_finite", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="dims", min_value=1),
    ]
    return frame, exps


def images_suite(items: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    """Every image an item points to decodes (the failing paths are the examples)."""
    import great_expectations.expectations as gxe
    from PIL import Image

    paths = [p for p in items["image"] if isinstance(p, str)]

    def decodes(path: str) -> bool:
        try:
            with Image.open(path) as img:
                img.load()
            return True
        except Exception:
            return False

    frame = pd.DataFrame({"image_that_does_not_decode": [None if decodes(p) else p for p in paths]},
                         dtype=object)
    exps = [gxe.ExpectColumnValuesToBeNull(column="image_that_does_not_decode")]
    return frame, exps
