"""The pretext-difficulty check: interpolation baselines computed right, flags raised."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignrec.features.fusion import FusionConfig, pretrain_fusion
from alignrec.features.pretext import (
    PretextScore,
    _neighbour_mean,
    flagged,
    format_pretext,
    pretext_check,
    pretext_metrics,
)
from tests.features.test_fusion import SMALL, synthetic_outputs


def test_neighbour_mean_averages_the_visible_4_neighbours():
    patches = torch.arange(9, dtype=torch.float32).reshape(1, 9, 1)  # 3x3 grid, value = index
    masked = torch.zeros(1, 9, dtype=torch.bool)
    masked[0, 4] = True  # the centre: neighbours 1, 3, 5, 7
    masked[0, 1] = True  # top middle: its visible neighbours are 0 and 2 (4 is masked)
    interp = _neighbour_mean(patches, masked)[0, :, 0]
    assert interp[4].item() == pytest.approx((3 + 5 + 7) / 3)
    assert interp[1].item() == pytest.approx((0 + 2) / 2)
    # no visible neighbour: the mean of the item's visible patches
    all_but_corner = torch.ones(1, 9, dtype=torch.bool)
    all_but_corner[0, 8] = False
    assert _neighbour_mean(patches, all_but_corner)[0, 0, 0].item() == pytest.approx(8.0)


def test_smooth_patches_make_interpolation_strong():
    """A constant image: any neighbour interpolation is exact (cosine 1), so an untrained model
    cannot beat it and the check flags the model."""
    out = synthetic_outputs()
    const = np.ones_like(out.image.patches)
    out = type(out)(out.n_items, out.text, type(out.image)(const, out.image.index), out.vectors)
    model = pretrain_fusion(out, FusionConfig(**{**SMALL, "epochs": 0})).model
    scores = {s.target: s for s in pretext_check(model, out)}
    assert scores["mim"].interpolation == pytest.approx(1.0, abs=1e-3)
    assert scores["mim"].model < 1.0 and "mim" in flagged(list(scores.values()))
    assert pretext_metrics(list(scores.values()))["pretext/flagged"] == 1.0
    assert "FLAG" in format_pretext(list(scores.values()))


def test_check_scores_every_target_and_never_changes_the_model():
    out = synthetic_outputs(vectors=True)
    model = pretrain_fusion(out, FusionConfig(**{**SMALL, "epochs": 2})).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    scores = pretext_check(model, out, seed=3)
    assert model.training  # the mode it was in
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    targets = {s.target for s in scores}
    assert {"mim", "mlm", "mvm:audio", "recon:text", "recon:image", "recon:vec:audio"} <= targets
    for s in scores:
        assert s.n > 0 and np.isfinite(s.model) and np.isfinite(s.interpolation)
        if s.target.startswith("recon:"):
            assert s.interpolation == 0.0  # the mean predicts 0 on a centred target
    assert pretext_check(model, out, seed=3) == scores  # seeded


def test_discrete_targets_are_scored_by_accuracy():
    out = synthetic_outputs()
    cfg = FusionConfig(**{**SMALL, "text_target": "ids", "image_target": "codes"})
    scores = {s.target: s for s in pretext_check(pretrain_fusion(out, cfg).model, out)}
    assert scores["mim"].metric == scores["mlm"].metric == "accuracy"
    assert 0.0 <= scores["mim"].interpolation <= 1.0 and 0.0 <= scores["mlm"].model <= 1.0


def test_a_score_flags_only_when_it_does_not_beat_interpolation():
    good = PretextScore("mim", "cosine", 0.9, 0.8, "x", 10)
    tie = PretextScore("mlm", "cosine", 0.5, 0.5, "x", 10)
    assert flagged([good]) == [] and flagged([good, tie]) == ["mlm"]
    assert pretext_metrics([good])["pretext/flagged"] == 0.0
