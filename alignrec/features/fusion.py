"""Stage 1 (inter-content alignment): a small fusion transformer over frozen encoder outputs.

The encoder sees one sequence per item::

    [CLS]  text tokens (MiniLM states)  image patches (EfficientNet 7x7 grid)  one token per precomputed vector

each projected to ``hidden_size`` and tagged with a modality-type embedding
(plus a position embedding for text tokens and image patches). Absent
modalities are simply left out of the attention mask, so an item with no
image, or no text, still gets a feature from what it has.

Training is BEiT-style mask-then-predict:

- masked text modelling: mask ``text_mask_ratio`` of the text tokens and predict
  their token ids (``text_target="ids"``) or regress their frozen MiniLM states
  (``"states"``);
- masked image modelling: mask ``image_mask_ratio`` of the patches and predict
  their code in a k-means codebook over patch features (``image_target="codes"``,
  the stand-in for BEiT's visual tokens) or regress the frozen patch features
  (``"features"``);
- optionally (``contrastive=True``) an image-text contrastive term between the
  [CLS] of the text-only and of the image-only pass, and (``fused_alignment``)
  the same InfoNCE between the fused [CLS] and each unimodal [CLS], which is what
  makes the feature degrade gracefully when a modality is missing;
- modality dropout: during training a modality of an item is dropped from the
  fused pass with probability ``modality_dropout`` (never all of them).

The output feature of an item is the mean over its final token states
(``pooling="mean"``, the default) or the final [CLS] state (``"cls"``), taken from
the unmasked full input, optionally passed through the fused contrastive
projection (``output="projection"``), centred by the mean feature of the
pretraining items (``center_output``, default on) and L2-normalised
(``normalize_output``, default off).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignrec.env import torch_device
from alignrec.errors import ConfigError, DataError
from alignrec.features.cache import EncoderOutputs

log = logging.getLogger(__name__)

CONFIG_FILE = "fusion_config.json"
WEIGHTS_FILE = "fusion_state.pt"
TEXT, IMAGE = "text", "image"


class MetricsLogger(Protocol):
    """What training reports losses to (an MLflow client wrapper, for instance)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...


class NullLogger:
    """The default :class:`MetricsLogger`: drops everything."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None


@dataclass
class FusionConfig:
    """Every setting of the fusion encoder and of its pretraining.

    Architecture:
        hidden_size: width of the fusion transformer.
        num_layers: number of transformer (BertLayer) blocks.
        num_heads: attention heads per block.
        intermediate_size: feed-forward width; 0 means 4 x hidden_size.
        dropout: dropout inside the transformer (attention and hidden).
        max_text_tokens: text positions the encoder accepts (MiniLM outputs at most 128).
        pooling: ``"cls"`` takes the final [CLS] state as the item feature, ``"mean"``
            averages all final token states of the item ([CLS] included).
        output: ``"hidden"`` returns the pooled final state (hidden_size wide),
            ``"projection"`` the fused contrastive projection of it (projection_dim wide).
        center_output: subtract the mean output over the pretraining items (a buffer
            stored with the model, fixed after training). Cosine on un-centred
            transformer features is dominated by their common direction.
        normalize_output: L2-normalise the output features (the protocols use
            cosine, so this only matters to consumers that use dot products).
        readout: ``"fused"`` returns the fused vector alone; ``"residual"`` (default)
            returns ``[raw_weight * p_m for each modality m, fused_weight * f]``, where
            ``p_m`` is the modality's L2-normalised pooled input vector (mean over tokens
            or patches) minus its mean over the pretraining items (``raw:concat``, centred),
            and ``f`` the centred, L2-normalised fused vector. An item lacking a modality gets the
            reconstruction head's prediction of ``p_m`` from what it has. The feature
            therefore keeps everything the raw vectors carry, and adds the fused view.
        raw_weight: weight of the pooled modality vectors in the residual readout.
        fused_weight: weight of the fused vector in the residual readout.

    Objectives:
        text_target: ``"ids"`` (cross-entropy over the MiniLM vocabulary) or
            ``"states"`` (cosine regression of the frozen MiniLM token states).
        text_mask_ratio: fraction of text tokens masked in the fused pass.
        image_target: ``"codes"`` (cross-entropy over a k-means codebook of patch
            features) or ``"features"`` (cosine regression of the frozen patch features).
        image_mask_ratio: fraction of image patches masked in the fused pass.
        image_mask_block: patches are masked in square blocks of up to this side
            (BEiT's block-wise masking), so a masked patch cannot be read off its
            neighbours; 1 masks single patches at random.
        codebook_size: number of k-means codes (visual tokens).
        codebook_sample: patches sampled to fit the codebook (MiniBatchKMeans).
        codebook_dims: PCA dimensions the patch features are reduced to before k-means.
        mlm_weight: weight of the masked text term.
        mim_weight: weight of the masked image term.
        vector_mask_ratio: per item, the probability of masking each precomputed vector
            token in the fused pass; masked vectors are regressed (cosine) from the rest.
        mvm_weight: weight of that masked vector term.
        recon_weight: weight of the modality reconstruction term: from the pooled fused
            state, predict each modality's centred pooled vector (cosine). A modality
            removed from the item by ``modality_dropout`` must be predicted from the
            others; that head also fills in a missing modality at readout.
        contrastive: add the image-text InfoNCE between text-only and image-only [CLS].
        fused_alignment: add the InfoNCE between the fused [CLS] and each unimodal [CLS]
            (needs ``contrastive``).
        contrastive_weight: weight of the contrastive terms.
        temperature: InfoNCE temperature.
        projection_dim: size of the contrastive projection heads.
        modality_dropout: per item and modality, the probability of dropping that
            modality from the fused pass (an item always keeps one).

    Optimisation:
        epochs: passes over the items (at least; see ``min_steps``).
        min_steps: train at least this many optimiser steps, adding epochs on a small
            catalogue (1,349 movielens items are 22 steps an epoch; 18,357 Sports items
            287), up to 10 x ``epochs``; 0 trains ``epochs`` exactly.
        batch_size: items per step.
        lr: peak AdamW learning rate (linear warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the steps used for warm-up.
        grad_clip: gradient-norm clip; 0 disables.
        seed: seed of initialisation, masking, dropout and item order.
        length_buckets: group items of similar text length into batches, within windows
            of this many batches (cuts padding); 1 disables.
        num_threads: torch CPU threads during training; None keeps the current setting.
    """

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 0
    dropout: float = 0.1
    max_text_tokens: int = 128
    pooling: Literal["cls", "mean"] = "mean"
    output: Literal["hidden", "projection"] = "hidden"
    center_output: bool = True
    normalize_output: bool = False
    readout: Literal["fused", "residual"] = "residual"
    raw_weight: float = 1.0
    fused_weight: float = 0.25

    text_target: Literal["ids", "states"] = "states"
    text_mask_ratio: float = 0.15
    image_target: Literal["codes", "features"] = "features"
    image_mask_ratio: float = 0.4
    image_mask_block: int = 3
    codebook_size: int = 256
    codebook_sample: int = 30000
    codebook_dims: int = 64
    mlm_weight: float = 1.0
    mim_weight: float = 1.0
    vector_mask_ratio: float = 0.3
    mvm_weight: float = 1.0
    recon_weight: float = 1.0
    contrastive: bool = True
    fused_alignment: bool = True
    contrastive_weight: float = 1.0
    temperature: float = 0.07
    projection_dim: int = 128
    modality_dropout: float = 0.3

    epochs: int = 3
    min_steps: int = 660
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    length_buckets: int = 8
    num_threads: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (
                self.hidden_size > 0 and self.hidden_size % max(self.num_heads, 1) == 0,
                "hidden_size must be a positive multiple of num_heads",
            ),
            (self.num_layers >= 1, "num_layers must be >= 1"),
            (0.0 <= self.text_mask_ratio < 1.0, "text_mask_ratio must be in [0, 1)"),
            (0.0 <= self.image_mask_ratio < 1.0, "image_mask_ratio must be in [0, 1)"),
            (0.0 <= self.modality_dropout < 1.0, "modality_dropout must be in [0, 1)"),
            (0.0 <= self.vector_mask_ratio < 1.0, "vector_mask_ratio must be in [0, 1)"),
            (self.readout in ("fused", "residual"), "readout must be 'fused' or 'residual'"),
            (
                self.raw_weight >= 0 and self.fused_weight >= 0,
                "raw_weight and fused_weight must be >= 0",
            ),
            (
                self.readout == "fused" or self.raw_weight > 0 or self.fused_weight > 0,
                "the residual readout needs raw_weight > 0 or fused_weight > 0",
            ),
            (self.image_mask_block >= 1, "image_mask_block must be >= 1"),
            (self.recon_weight >= 0, "recon_weight must be >= 0"),
            (self.pooling in ("cls", "mean"), "pooling must be 'cls' or 'mean'"),
            (self.output in ("hidden", "projection"), "output must be 'hidden' or 'projection'"),
            (self.text_target in ("ids", "states"), "text_target must be 'ids' or 'states'"),
            (
                self.image_target in ("codes", "features"),
                "image_target must be 'codes' or 'features'",
            ),
            (self.codebook_size >= 2, "codebook_size must be >= 2"),
            (self.epochs >= 0 and self.batch_size >= 2, "epochs >= 0 and batch_size >= 2"),
            (self.min_steps >= 0, "min_steps must be >= 0"),
            (self.temperature > 0, "temperature must be > 0"),
            (1 <= self.max_text_tokens <= 512, "max_text_tokens must be in [1, 512]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"FusionConfig: {msg}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FusionConfig:
        """Build from a mapping, refusing unknown keys with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(
                f"FusionConfig: unknown keys {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def epochs_for(self, n_items: int) -> int:
        """Epochs trained on ``n_items`` items: ``epochs``, or more when that many epochs
        would give fewer than ``min_steps`` optimiser steps, at most 10 x ``epochs`` (a toy
        catalogue of one batch does not train 660 epochs; 0 epochs stays 0)."""
        if self.epochs == 0 or self.min_steps <= 0:
            return self.epochs
        steps_per_epoch = max(1, math.ceil(n_items / self.batch_size))
        wanted = math.ceil(self.min_steps / steps_per_epoch)
        return max(self.epochs, min(10 * self.epochs, wanted))


@dataclass(frozen=True)
class ModalityLayout:
    """Which inputs a fusion encoder was built for: needed to rebuild it from disk.

    Attributes:
        text_dim: width of the text token states (0 = no text modality).
        vocab_size: size of the text vocabulary (for ``text_target="ids"``).
        image_dim: width of the image patch features (0 = no image modality).
        n_patches: patches per image.
        vectors: precomputed modality name -> its dimension, in token order.
    """

    text_dim: int = 0
    vocab_size: int = 0
    image_dim: int = 0
    n_patches: int = 0
    vectors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, outputs: EncoderOutputs) -> ModalityLayout:
        text_dim = int(outputs.text.states.shape[1]) if outputs.text is not None else 0
        vocab = 0
        if outputs.text is not None:
            vocab = int(outputs.text.ids.max()) + 1 if len(outputs.text.ids) else 1
            vocab = max(vocab, 30522)  # MiniLM's vocabulary; keeps heads comparable across datasets
        image_dim = n_patches = 0
        if outputs.image is not None:
            n_patches, image_dim = (int(s) for s in outputs.image.patches.shape[1:])
        return cls(
            text_dim,
            vocab,
            image_dim,
            n_patches,
            {k: int(v.shape[1]) for k, v in outputs.vectors.items()},
        )

    def dim(self, modality: str) -> int:
        """Width of a modality's pooled input vector."""
        if modality == TEXT:
            return self.text_dim
        if modality == IMAGE:
            return self.image_dim
        return self.vectors[modality.removeprefix("vec:")]

    @property
    def modalities(self) -> list[str]:
        """Modality keys in token order: ``text``, ``image``, then ``vec:<name>``."""
        mods = ([TEXT] if self.text_dim else []) + ([IMAGE] if self.image_dim else [])
        return mods + [f"vec:{k}" for k in self.vectors]


@dataclass
class Batch:
    """Model inputs for a batch of items (absent parts are None / all-False masks)."""

    text: torch.Tensor | None  # float [B, Lt, text_dim]
    text_ids: torch.Tensor | None  # long [B, Lt]
    text_mask: torch.Tensor | None  # bool [B, Lt]
    image: torch.Tensor | None  # float [B, P, image_dim]
    image_mask: torch.Tensor | None  # bool [B]
    vectors: dict[str, torch.Tensor]  # name -> float [B, D]
    vector_mask: dict[str, torch.Tensor]  # name -> bool [B]

    @property
    def size(self) -> int:
        for t in (self.text, self.image, *self.vectors.values()):
            if t is not None:
                return int(t.shape[0])
        return 0

    @property
    def device(self) -> torch.device:
        for t in (self.text, self.image, *self.vectors.values()):
            if t is not None:
                return t.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> Batch:
        """A copy with every tensor on ``device`` (the same batch when it is there already)."""
        device = torch.device(device)
        if self.device == device:
            return self

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            move(self.text),
            move(self.text_ids),
            move(self.text_mask),
            move(self.image),
            move(self.image_mask),
            {k: move(v) for k, v in self.vectors.items()},
            {k: move(v) for k, v in self.vector_mask.items()},
        )

    def has(self, modality: str) -> torch.Tensor:
        """Bool [B]: which items of the batch have this modality."""
        if modality == TEXT and self.text_mask is not None:
            return self.text_mask.any(1)
        if modality == IMAGE and self.image_mask is not None:
            return self.image_mask
        name = modality.removeprefix("vec:")
        if modality.startswith("vec:") and name in self.vector_mask:
            return self.vector_mask[name]
        return torch.zeros(self.size, dtype=torch.bool, device=self.device)

    def only(self, keep: set[str]) -> Batch:
        """A copy where every modality outside ``keep`` is marked absent."""
        return Batch(
            text=self.text if TEXT in keep else None,
            text_ids=self.text_ids if TEXT in keep else None,
            text_mask=self.text_mask if TEXT in keep else None,
            image=self.image if IMAGE in keep else None,
            image_mask=self.image_mask if IMAGE in keep else None,
            vectors={k: v for k, v in self.vectors.items() if f"vec:{k}" in keep},
            vector_mask={k: v for k, v in self.vector_mask.items() if f"vec:{k}" in keep},
        )

    def without(self, drop: dict[str, torch.Tensor]) -> Batch:
        """A copy where modality ``m`` is absent for the items flagged in ``drop[m]``."""
        text_mask, image_mask = self.text_mask, self.image_mask
        vmask = dict(self.vector_mask)
        for mod, flags in drop.items():
            if mod == TEXT and text_mask is not None:
                text_mask = text_mask & ~flags[:, None]
            elif mod == IMAGE and image_mask is not None:
                image_mask = image_mask & ~flags
            elif mod.startswith("vec:") and mod[4:] in vmask:
                vmask[mod[4:]] = vmask[mod[4:]] & ~flags
        return Batch(
            self.text, self.text_ids, text_mask, self.image, image_mask, self.vectors, vmask
        )


def resolve_modality(outputs: EncoderOutputs | ModalityLayout, name: str) -> str:
    """Map a user-facing modality name to a model key.

    ``text``/``image`` mean the encoded modality when the dataset has it, else a
    precomputed vector of that name (lastfm-2k's ``text`` is a vector); any other
    name must be a precomputed modality. ``vec:<name>`` is accepted as is.
    """
    mods = outputs.modalities if isinstance(outputs, ModalityLayout) else outputs.modalities
    if name in mods:
        return name
    if f"vec:{name}" in mods:
        return f"vec:{name}"
    raise DataError(
        f"the features have no modality {name!r}; available: {', '.join(mods) or 'none'}"
    )


def collate(
    outputs: EncoderOutputs,
    items: np.ndarray,
    *,
    max_text_tokens: int = 128,
    drop: dict[str, np.ndarray] | None = None,
) -> Batch:
    """Gather the stored encoder outputs of ``items`` into padded tensors.

    ``drop`` maps model modality keys to boolean [n_items] arrays; flagged items
    are treated as lacking that modality.
    """
    items = np.asarray(items, dtype=np.int64)
    b = len(items)
    text = text_ids = text_mask = image = image_mask = None
    if outputs.text is not None:
        tok = outputs.text
        lengths = np.minimum(tok.lengths[items], max_text_tokens)
        lt = max(int(lengths.max()) if b else 0, 1)
        text = np.zeros((b, lt, tok.states.shape[1]), np.float32)
        text_ids = np.zeros((b, lt), np.int64)
        text_mask = np.zeros((b, lt), bool)
        for r, i in enumerate(items):
            n = int(lengths[r])
            if n:
                a = int(tok.offsets[i])
                text[r, :n] = tok.states[a : a + n]
                text_ids[r, :n] = tok.ids[a : a + n]
                text_mask[r, :n] = True
        text, text_ids, text_mask = (
            torch.from_numpy(text),
            torch.from_numpy(text_ids),
            torch.from_numpy(text_mask),
        )
    if outputs.image is not None:
        img = outputs.image
        rows = img.index[items]
        image_mask = rows >= 0
        image = np.zeros((b, *img.patches.shape[1:]), np.float32)
        if image_mask.any():
            image[image_mask] = img.patches[rows[image_mask]]
        image, image_mask = torch.from_numpy(image), torch.from_numpy(image_mask)
    vectors = {
        k: torch.from_numpy(np.ascontiguousarray(v[items], dtype=np.float32))
        for k, v in outputs.vectors.items()
    }
    vector_mask = {k: torch.ones(b, dtype=torch.bool) for k in outputs.vectors}
    batch = Batch(text, text_ids, text_mask, image, image_mask, vectors, vector_mask)
    if drop:
        batch = batch.without(
            {m: torch.from_numpy(np.asarray(f, bool)[items]) for m, f in drop.items()}
        )
    return batch


class FusionEncoder(nn.Module):
    """The fusion transformer: modality projections, type embeddings, BertLayers, heads."""

    def __init__(self, config: FusionConfig, layout: ModalityLayout) -> None:
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertEncoder

        if not layout.modalities:
            raise DataError(
                "the fusion encoder needs at least one modality (text, image or a vector)"
            )
        self.config = config
        self.layout = layout
        h = config.hidden_size
        bert = BertConfig(
            hidden_size=h,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size or 4 * h,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
            attn_implementation="sdpa",
        )
        self.encoder = BertEncoder(bert)
        self.cls = nn.Parameter(torch.zeros(h))
        self.type_embedding = nn.Embedding(1 + len(layout.modalities), h)  # 0 = [CLS]
        self.type_index = {m: i + 1 for i, m in enumerate(layout.modalities)}
        self.input_norm = nn.LayerNorm(h)
        self.heads = nn.ModuleDict()
        if layout.text_dim:
            self.text_proj = nn.Sequential(
                nn.LayerNorm(layout.text_dim), nn.Linear(layout.text_dim, h)
            )
            self.text_pos = nn.Embedding(config.max_text_tokens, h)
            self.text_mask_token = nn.Parameter(torch.zeros(h))
            out = layout.vocab_size if config.text_target == "ids" else layout.text_dim
            self.heads["mlm"] = _head(h, out)
        if layout.image_dim:
            self.image_proj = nn.Sequential(
                nn.LayerNorm(layout.image_dim), nn.Linear(layout.image_dim, h)
            )
            self.image_pos = nn.Embedding(layout.n_patches, h)
            self.image_mask_token = nn.Parameter(torch.zeros(h))
            out = config.codebook_size if config.image_target == "codes" else layout.image_dim
            self.heads["mim"] = _head(h, out)
        self.vector_proj = nn.ModuleDict(
            {k: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, h)) for k, d in layout.vectors.items()}
        )
        if layout.vectors:
            self.vector_mask_token = nn.Parameter(torch.zeros(h))
            for k, d in layout.vectors.items():
                self.heads[f"mvm_{k}"] = _head(h, d)
        self.proj = nn.ModuleDict(
            {
                m.replace(":", "_"): nn.Linear(h, config.projection_dim)
                for m in ["fused", *layout.modalities]
            }
        )
        # Modality reconstruction: heads predicting each modality's centred pooled vector from
        # the pooled fused state, and the pooled means that centre those vectors.
        self.reconstructs = config.readout == "residual" or config.recon_weight > 0
        if self.reconstructs:
            for m in layout.modalities:
                dim = layout.dim(m)
                self.heads[f"rec_{_safe(m)}"] = _head(h, dim)
                self.register_buffer(f"pool_mean_{_safe(m)}", torch.zeros(dim))
                # Mean cosine of the head's prediction with the truth when the modality is
                # removed (set after training): how far a filled-in modality is trusted.
                self.register_buffer(f"recon_cos_{_safe(m)}", torch.zeros(()))
        # Mean output over the pretraining items, subtracted from every feature (center_output).
        out_dim = config.projection_dim if config.output == "projection" else h
        self.register_buffer("output_mean", torch.zeros(out_dim))
        nn.init.normal_(self.cls, std=0.02)
        for name in ("text_mask_token", "image_mask_token", "vector_mask_token"):
            p = getattr(self, name, None)
            if p is not None:
                nn.init.normal_(p, std=0.02)

    def forward(
        self,
        batch: Batch,
        text_masked: torch.Tensor | None = None,
        image_masked: torch.Tensor | None = None,
        vector_masked: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, slice]]:
        """Encode a batch.

        Args:
            batch: the inputs.
            text_masked: bool [B, Lt], text tokens replaced by the mask token.
            image_masked: bool [B, P], patches replaced by the mask token.
            vector_masked: name -> bool [B], precomputed vectors replaced by the mask token.

        Returns:
            final states [B, L, H], the attention mask [B, L] (bool) and the slice
            of the sequence each modality occupies.
        """
        b = batch.size
        parts, masks, where = [], [], {}
        cls = (self.cls + self.type_embedding.weight[0]).expand(b, 1, -1)
        parts.append(cls)
        masks.append(torch.ones(b, 1, dtype=torch.bool, device=cls.device))
        pos = 1
        if batch.text is not None and self.layout.text_dim and batch.text_mask.any():
            x = self.text_proj(batch.text)
            if text_masked is not None:
                x = torch.where(text_masked[..., None], self.text_mask_token.expand_as(x), x)
            lt = x.shape[1]
            x = x + self.text_pos.weight[:lt] + self.type_embedding.weight[self.type_index[TEXT]]
            parts.append(x)
            masks.append(batch.text_mask)
            where[TEXT] = slice(pos, pos + lt)
            pos += lt
        if batch.image is not None and self.layout.image_dim and batch.image_mask.any():
            x = self.image_proj(batch.image)
            if image_masked is not None:
                x = torch.where(image_masked[..., None], self.image_mask_token.expand_as(x), x)
            npatch = x.shape[1]
            x = (
                x
                + self.image_pos.weight[:npatch]
                + self.type_embedding.weight[self.type_index[IMAGE]]
            )
            parts.append(x)
            masks.append(batch.image_mask[:, None].expand(b, npatch))
            where[IMAGE] = slice(pos, pos + npatch)
            pos += npatch
        for name, vec in batch.vectors.items():
            key = f"vec:{name}"
            if key not in self.type_index or not batch.vector_mask[name].any():
                continue
            x = self.vector_proj[name](vec)
            if vector_masked is not None and name in vector_masked:
                x = torch.where(
                    vector_masked[name][:, None], self.vector_mask_token.expand_as(x), x
                )
            x = x[:, None] + self.type_embedding.weight[self.type_index[key]]
            parts.append(x)
            masks.append(batch.vector_mask[name][:, None])
            where[key] = slice(pos, pos + 1)
            pos += 1
        hidden = self.input_norm(torch.cat(parts, dim=1))
        attn = torch.cat(masks, dim=1)
        additive = torch.zeros(attn.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(
            ~attn, torch.finfo(hidden.dtype).min
        )
        states = self.encoder(hidden, attention_mask=additive[:, None, None, :]).last_hidden_state
        return states, attn, where

    def pool(self, states: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Item vectors [B, H] from final states, by the configured pooling."""
        if self.config.pooling == "cls":
            return states[:, 0]
        w = attn.to(states.dtype)[..., None]
        return (states * w).sum(1) / w.sum(1).clamp_min(1.0)

    @property
    def fused_dim(self) -> int:
        """Width of the fused vector (the whole feature with ``readout="fused"``)."""
        return (
            self.config.projection_dim
            if self.config.output == "projection"
            else self.config.hidden_size
        )

    @property
    def output_dim(self) -> int:
        """Width of the item features :meth:`embed` returns."""
        if self.config.readout == "fused":
            return self.fused_dim
        return self.fused_dim + sum(self.layout.dim(m) for m in self.layout.modalities)

    def pool_mean(self, modality: str) -> torch.Tensor:
        """Mean pooled vector of a modality over the pretraining items (a buffer)."""
        return getattr(self, f"pool_mean_{_safe(modality)}")

    def pooled_targets(self, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each modality's pooled input, centred and L2-normalised, with presence [B]."""
        out = {}
        for m, (vec, present) in pooled_inputs(batch).items():
            if m in self.layout.modalities:
                out[m] = (F.normalize(vec - self.pool_mean(m), dim=-1), present)
        return out

    def recon_cos(self, modality: str) -> torch.Tensor:
        """Calibrated cosine of the reconstruction of ``modality`` (0 before calibration)."""
        return getattr(self, f"recon_cos_{_safe(modality)}")

    def reconstruct(self, pooled_state: torch.Tensor, modality: str) -> torch.Tensor:
        """Predicted centred pooled vector of ``modality`` from pooled fused states."""
        return self.heads[f"rec_{_safe(modality)}"](pooled_state)

    @torch.no_grad()
    def fused(self, batch: Batch) -> torch.Tensor:
        """The un-centred fused vectors [B, fused_dim] of a batch (no masking)."""
        states, attn, _ = self(batch)
        pooled = self.pool(states, attn)
        return self.proj["fused"](pooled) if self.config.output == "projection" else pooled

    @torch.no_grad()
    def embed(self, batch: Batch, *, centre: bool = True) -> torch.Tensor:
        """Output features [B, output_dim] of a batch (no masking, eval mode expected)."""
        states, attn, _ = self(batch)
        pooled = self.pool(states, attn)
        z = self.proj["fused"](pooled) if self.config.output == "projection" else pooled
        if centre and self.config.center_output:
            z = z - self.output_mean
        if self.config.readout == "fused":
            return F.normalize(z, dim=-1) if self.config.normalize_output else z
        parts = []
        inputs = pooled_inputs(batch)
        for m in self.layout.modalities:
            # A missing modality: its prediction, at the expected norm of a centred unit
            # vector (E|p - mean|^2 = 1 - |mean|^2) shrunk by the prediction's measured cosine
            # with the truth (the least-squares scale of a unit predictor), so a poor
            # prediction stays near the mean instead of adding noise.
            mean = self.pool_mean(m)
            scale = (1 - mean.square().sum()).clamp_min(0).sqrt() * self.recon_cos(m)
            part = F.normalize(self.reconstruct(pooled, m), dim=-1) * scale
            if m in inputs:
                vec, present = inputs[m]
                part = torch.where(present[:, None], vec - mean, part)
            parts.append(self.config.raw_weight * part)
        parts.append(self.config.fused_weight * F.normalize(z, dim=-1))
        return torch.cat(parts, dim=-1)


    @torch.no_grad()
    def centring_offset(self, centre: float) -> np.ndarray:
        """What turns the residual readout's rows into rows whose modality parts are centred
        by the fraction ``centre`` of their mean instead of all of it: ``(1 - centre) *
        raw_weight * [mean of each modality's pooled vector..., 0 for the fused part]`` [D],
        added to every row (an item lacking a modality gets its prediction plus that share of
        the mean). Centring helps cosine when a modality's vectors share a strong common
        direction (movielens' posters), and can hurt when that direction carries signal
        (lastfm-2k's vectors); :mod:`alignrec.features.selection` picks the share on
        validation."""
        if self.config.readout != "residual":
            raise ValueError("centring_offset applies to the residual readout only")
        parts = [
            (1.0 - centre) * self.config.raw_weight * self.pool_mean(m).float().cpu()
            for m in self.layout.modalities
        ]
        parts.append(torch.zeros(self.fused_dim))
        return torch.cat(parts).numpy().astype(np.float32)


def _safe(modality: str) -> str:
    return modality.replace(":", "_")


def pooled_inputs(batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each modality's pooled input vector [B, D], L2-normalised, and presence [B].

    Text: mean of the token states; image: mean of the patch features; a precomputed
    vector as it is. These are the raw feature sets' vectors (:mod:`alignrec.features.sets`).
    """
    out = {}
    if batch.text is not None and batch.text_mask is not None:
        w = batch.text_mask.to(batch.text.dtype)[..., None]
        vec = (batch.text * w).sum(1) / w.sum(1).clamp_min(1.0)
        out[TEXT] = (F.normalize(vec, dim=-1), batch.text_mask.any(1))
    if batch.image is not None and batch.image_mask is not None:
        out[IMAGE] = (F.normalize(batch.image.mean(1), dim=-1), batch.image_mask)
    for name, vec in batch.vectors.items():
        out[f"vec:{name}"] = (F.normalize(vec, dim=-1), batch.vector_mask[name])
    return out


def _head(h: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h), nn.Linear(h, out))


def _info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of a and b (in-batch negatives)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def fit_codebook(
    outputs: EncoderOutputs, config: FusionConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """The visual-token codebook: k-means over PCA-reduced, L2-normalised patch features.

    Returns ``(basis [D, d], centres [K, d])``: a patch feature ``x`` gets the code of the
    nearest centre to ``normalize(normalize(x) @ basis)``. The PCA step (``codebook_dims``)
    keeps MiniBatchKMeans fast on 2 cores; None when there are no images or the image
    target is not ``codes``.
    """
    if outputs.image is None or config.image_target != "codes":
        return None
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    patches = outputs.image.patches
    n_img, n_patch, dim = patches.shape
    rng = np.random.default_rng(config.seed)
    total = n_img * n_patch
    pick = np.sort(rng.choice(total, size=min(total, config.codebook_sample), replace=False))
    sample = np.asarray(patches.reshape(total, dim)[pick], dtype=np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True).clip(1e-6)
    d = min(config.codebook_dims, dim, len(sample))
    centred = sample - sample.mean(0)
    _, _, vt = np.linalg.svd(centred[: min(len(centred), 8192)], full_matrices=False)
    basis = np.ascontiguousarray(vt[:d].T.astype(np.float32))
    reduced = sample @ basis
    reduced /= np.linalg.norm(reduced, axis=1, keepdims=True).clip(1e-6)
    k = min(config.codebook_size, len(reduced))
    with threadpool_limits(limits=1):
        km = MiniBatchKMeans(
            n_clusters=k, random_state=config.seed, batch_size=2048, n_init=1, max_iter=50
        )
        km.fit(reduced)
    centres = km.cluster_centers_.astype(np.float32)
    if k < config.codebook_size:  # tiny data: pad with unreachable codes so the head size is fixed
        centres = np.concatenate([centres, np.full((config.codebook_size - k, d), 1e6, np.float32)])
    return basis, centres


def _codes(patches: torch.Tensor, codebook: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Nearest-centroid code of each patch feature [..., D] -> long [...]."""
    basis, centres = codebook
    x = F.normalize(F.normalize(patches, dim=-1) @ basis, dim=-1)
    d = -2 * x @ centres.T + (centres * centres).sum(1)
    return d.argmin(-1)


@dataclass
class TrainResult:
    """A trained fusion encoder with its loss history and timing."""

    model: FusionEncoder
    history: list[dict[str, float]]
    seconds: float


def pretrain_fusion(
    outputs: EncoderOutputs,
    config: FusionConfig | None = None,
    *,
    logger: MetricsLogger | None = None,
    progress: bool = False,
    on_epoch: Callable[[int, FusionEncoder], dict[str, float] | None] | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train a fusion encoder on every item's stored encoder outputs (no interactions are used).

    Args:
        outputs: the frozen encoders' outputs (see :func:`alignrec.features.cache.extract`).
        config: settings; defaults to ``FusionConfig()``.
        logger: receives ``train/loss`` (and each term) per step and per-epoch means
            ``epoch/...``; default: no-op.
        progress: show a tqdm bar over epochs.
        on_epoch: called after each epoch with (epoch, model); metrics it returns are
            logged too (e.g. a validation probe). The model is in eval mode during the call.
        device: torch device to train on. Masks and dropout are drawn on the CPU from the
            config's seed, so a seed picks the same masks on every device.

    Returns:
        the trained model (eval mode, on ``device``), the per-epoch mean losses and the
        training seconds.
    """
    config = config or FusionConfig()
    logger = logger or NullLogger()
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(outputs, config, logger, progress, on_epoch, torch_device(device))
    finally:
        torch.set_num_threads(threads)


def _train(outputs, config, logger, progress, on_epoch, device: torch.device) -> TrainResult:
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    layout = ModalityLayout.of(outputs)
    model = FusionEncoder(config, layout)
    if model.reconstructs:
        set_pool_means(model, outputs)
    model.to(device)
    book = fit_codebook(outputs, config)
    centres_t = tuple(torch.from_numpy(a).to(device) for a in book) if book is not None else None
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n = outputs.n_items
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    epochs = config.epochs_for(n)
    total = max(1, steps_per_epoch * epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warm = max(1, int(config.warmup_ratio * total))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history: list[dict[str, float]] = []
    step = 0
    from tqdm.auto import tqdm

    for epoch in tqdm(range(epochs), desc="fusion", disable=not progress, leave=False):
        model.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for idx in _epoch_batches(outputs, config, rng):
            if len(idx) < 2:
                continue
            batch = collate(outputs, idx, max_text_tokens=config.max_text_tokens).to(device)
            losses = _step_losses(model, batch, config, centres_t, gen)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            metrics = {
                "train/loss": loss.item(),
                **{f"train/{k}": v.item() for k, v in losses.items()},
            }
            logger.log_metrics(metrics, step=step)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            step += 1
        means = {k.replace("train/", "epoch/"): v / counts[k] for k, v in sums.items()}
        model.eval()
        if on_epoch is not None:
            extra = on_epoch(epoch, model)
            if extra:
                means.update(extra)
        logger.log_metrics(means, step=epoch)
        history.append({"epoch": float(epoch), **means})
        log.info("fusion epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in means.items()))
    model.eval()
    if config.center_output:
        sums = torch.zeros(model.fused_dim, dtype=torch.float64, device=device)
        for start in range(0, n, 128):
            idx = np.arange(start, min(start + 128, n))
            batch = collate(outputs, idx, max_text_tokens=config.max_text_tokens).to(device)
            sums += model.fused(batch).double().sum(0)
        model.output_mean.copy_((sums / max(n, 1)).to(model.output_mean.dtype))
    if model.reconstructs:
        for m, (cos, _) in reconstruction_cosines(model, outputs).items():
            model.recon_cos(m).fill_(max(0.0, cos))
    return TrainResult(model, history, time.perf_counter() - t0)


@torch.no_grad()
def reconstruction_cosines(
    model: FusionEncoder, outputs: EncoderOutputs, items: np.ndarray | None = None
) -> dict[str, tuple[float, int]]:
    """Per modality, the mean cosine between the head's prediction of the centred pooled
    vector, made with that modality removed, and the truth, over the items (default: all)
    that have it and some other modality, with their count. Modalities never predictable
    are left out."""
    device = model.output_mean.device
    items = np.arange(outputs.n_items) if items is None else np.asarray(items)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for start in range(0, len(items), 128):
        idx = items[start : start + 128]
        batch = collate(outputs, idx, max_text_tokens=model.config.max_text_tokens).to(device)
        has = {m: batch.has(m) for m in model.layout.modalities}
        for m, (target, present) in model.pooled_targets(batch).items():
            others = [h for k, h in has.items() if k != m]
            if not others:
                continue
            rows = present & torch.stack(others, 1).any(1)
            if not rows.any():
                continue
            st, at, _ = model(batch.without({m: rows}))
            pred = model.reconstruct(model.pool(st, at)[rows], m)
            cos = F.cosine_similarity(pred, target[rows], dim=-1)
            sums[m] = sums.get(m, 0.0) + float(cos.sum())
            counts[m] = counts.get(m, 0) + int(rows.sum())
    return {m: (sums[m] / counts[m], counts[m]) for m in sums}


def set_pool_means(model: FusionEncoder, outputs: EncoderOutputs) -> None:
    """Store each modality's mean pooled vector over the items that have it (the centre of
    the reconstruction targets and of the residual readout)."""
    from alignrec.features.sets import raw_part

    for m in model.layout.modalities:
        table = raw_part(outputs, m)
        present = np.linalg.norm(table, axis=1) > 0
        mean = table[present].mean(0) if present.any() else np.zeros(table.shape[1], np.float32)
        model.pool_mean(m).copy_(torch.from_numpy(np.asarray(mean, np.float32)))


def _epoch_batches(
    outputs: EncoderOutputs, config: FusionConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of item batches: shuffled, and with ``length_buckets`` > 1 grouped by text
    length inside windows of that many batches (less padding), batch order shuffled again."""
    order = rng.permutation(outputs.n_items)
    bs = config.batch_size
    if config.length_buckets > 1 and outputs.text is not None:
        lengths = outputs.text.lengths
        window = bs * config.length_buckets
        for a in range(0, len(order), window):
            chunk = order[a : a + window]
            order[a : a + window] = chunk[np.argsort(lengths[chunk], kind="stable")]
    batches = [order[a : a + bs] for a in range(0, len(order), bs)]
    if config.length_buckets > 1:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _uniform(shape, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """U(0, 1) draws from ``gen`` on the CPU, moved to ``device``: a seed gives the same
    masks and dropout on every device."""
    return torch.rand(shape, generator=gen).to(device)


def _random_mask(valid: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """Bool mask selecting about ``ratio`` of the valid positions (at least one per row with any)."""
    if ratio <= 0:
        return torch.zeros_like(valid)
    score = _uniform(valid.shape, gen, valid.device).masked_fill(~valid, 2.0)
    k = (valid.sum(-1, keepdim=True).float() * ratio).ceil().clamp_min(1).long()
    k = torch.where(valid.any(-1, keepdim=True), k, torch.zeros_like(k))
    rank = score.argsort(-1).argsort(-1)
    return (rank < k) & valid


def _block_mask(
    has: torch.Tensor, n_patches: int, ratio: float, block: int, gen: torch.Generator
) -> torch.Tensor:
    """Bool [B, P]: BEiT-style block-wise masking of a square patch grid.

    Rectangles of sides 1..``block`` are masked at random positions until at least
    ``ratio`` of an item's patches are masked; rows where ``has`` is False stay unmasked.
    A grid that is not square, or ``block`` 1, falls back to independent patches.
    """
    side = int(round(math.sqrt(n_patches)))
    if block <= 1 or side * side != n_patches:
        return _random_mask(has[:, None].expand(len(has), n_patches), ratio, gen)
    mask = np.zeros((len(has), side, side), bool)
    if ratio > 0:
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=gen)))
        target = max(1, math.ceil(ratio * n_patches))
        for b in np.flatnonzero(has.cpu().numpy()):
            while mask[b].sum() < target:
                h, w = rng.integers(1, block + 1, size=2)
                r, c = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
                mask[b, r : r + h, c : c + w] = True
    return torch.from_numpy(mask.reshape(len(has), n_patches)).to(has.device)


def draw_masks(
    model: FusionEncoder, batch: Batch, gen: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The text tokens and image patches masked in a fused pass (bool [B, Lt], [B, P]).

    Text: ``text_mask_ratio`` of each item's tokens at random, MiniLM's [CLS] and [SEP]
    kept visible. Image: block-wise, ``image_mask_ratio`` of the patches.
    """
    config = model.config
    text_masked = image_masked = None
    if batch.text is not None and model.layout.text_dim:
        valid = batch.text_mask.clone()
        lengths = valid.sum(1)
        valid[:, 0] = False  # keep [CLS]/[SEP] of MiniLM visible
        valid[torch.arange(batch.size, device=valid.device), (lengths - 1).clamp_min(0)] = False
        text_masked = _random_mask(valid, config.text_mask_ratio, gen)
    if batch.image is not None and model.layout.image_dim:
        image_masked = _block_mask(
            batch.image_mask,
            batch.image.shape[1],
            config.image_mask_ratio,
            config.image_mask_block,
            gen,
        )
    return text_masked, image_masked


def _step_losses(
    model: FusionEncoder,
    batch: Batch,
    config: FusionConfig,
    centres: tuple[torch.Tensor, torch.Tensor] | None,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    losses: dict[str, torch.Tensor] = {}
    mods = [m for m in model.layout.modalities if bool(batch.has(m).any())]
    b = batch.size

    # Modality dropout in the fused pass: drop each present modality with some probability,
    # but never the last one an item has.
    fused = batch
    if config.modality_dropout > 0 and len(mods) > 1:
        has = torch.stack([batch.has(m) for m in mods], 1)  # [B, M]
        drop = (_uniform(has.shape, gen, has.device) < config.modality_dropout) & has
        all_gone = (has & ~drop).sum(1) == 0
        if all_gone.any():  # restore one random present modality for those items
            keep = _uniform(has.shape, gen, has.device).masked_fill(~has, -1.0).argmax(1)
            drop[all_gone, keep[all_gone]] = False
        fused = batch.without({m: drop[:, j] for j, m in enumerate(mods)})

    text_masked, image_masked = draw_masks(model, fused, gen)
    vector_masked = (
        {
            name: (_uniform(b, gen, present.device) < config.vector_mask_ratio) & present
            for name, present in fused.vector_mask.items()
        }
        if config.vector_mask_ratio > 0
        else None
    )
    states, attn, where = model(fused, text_masked, image_masked, vector_masked)

    if TEXT in where and text_masked is not None and text_masked.any() and config.mlm_weight:
        pred = model.heads["mlm"](states[:, where[TEXT]][text_masked])
        if config.text_target == "ids":
            target = fused.text_ids[text_masked]
            losses["mlm"] = config.mlm_weight * F.cross_entropy(pred, target)
        else:
            target = fused.text[text_masked]
            losses["mlm"] = (
                config.mlm_weight * (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
            )
    if IMAGE in where and image_masked is not None and image_masked.any() and config.mim_weight:
        pred = model.heads["mim"](states[:, where[IMAGE]][image_masked])
        target_feats = fused.image[image_masked]
        if config.image_target == "codes":
            losses["mim"] = config.mim_weight * F.cross_entropy(pred, _codes(target_feats, centres))
        else:
            losses["mim"] = (
                config.mim_weight * (1 - F.cosine_similarity(pred, target_feats, dim=-1)).mean()
            )

    if vector_masked:
        terms = []
        for name, flags in vector_masked.items():
            key = f"vec:{name}"
            if key in where and flags.any():
                pred = model.heads[f"mvm_{name}"](states[:, where[key].start][flags])
                target = fused.vectors[name][flags]
                terms.append((1 - F.cosine_similarity(pred, target, dim=-1)).mean())
        if terms and config.mvm_weight:
            losses["mvm"] = config.mvm_weight * torch.stack(terms).mean()

    if config.recon_weight and model.reconstructs:
        # From the pooled fused state, predict every modality's centred pooled vector: the
        # ones modality dropout removed must come from the other modalities.
        pooled = model.pool(states, attn)
        terms = []
        for m, (target, present) in model.pooled_targets(batch).items():
            if bool(present.any()):
                pred = model.reconstruct(pooled[present], m)
                terms.append((1 - F.cosine_similarity(pred, target[present], dim=-1)).mean())
        if terms:
            losses["recon"] = config.recon_weight * torch.stack(terms).mean()

    if config.contrastive and len(mods) > 1:
        # Unimodal passes, unmasked: one [CLS] per modality, then InfoNCE between every pair of
        # modalities (image-text for text+image data) over the items having both.
        uni: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in mods:
            present = batch.has(m)
            if int(present.sum()) < 2:
                continue
            st, at, _ = model(batch.only({m}))
            uni[m] = (model.proj[m.replace(":", "_")](model.pool(st, at)), present)
        keys = list(uni)
        terms = []
        for i, a in enumerate(keys):
            for bkey in keys[i + 1 :]:
                both = uni[a][1] & uni[bkey][1]
                if int(both.sum()) >= 2:
                    terms.append(_info_nce(uni[a][0][both], uni[bkey][0][both], config.temperature))
        if terms:
            losses["itc"] = config.contrastive_weight * torch.stack(terms).mean()
        if config.fused_alignment and keys:
            zf = model.proj["fused"](model.pool(states, attn))
            terms = []
            for m in keys:
                z, present = uni[m]
                if int(present.sum()) >= 2:
                    terms.append(_info_nce(zf[present], z[present], config.temperature))
            if terms:
                losses["align"] = config.contrastive_weight * torch.stack(terms).mean()
    if not losses:
        losses["zero"] = sum(p.sum() * 0.0 for p in model.parameters())
    return losses


def encode_items(
    model: FusionEncoder,
    outputs: EncoderOutputs,
    *,
    drop: dict[str, np.ndarray] | None = None,
    batch_size: int = 128,
    centre: bool = True,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Item feature table float32 [n_items, hidden_size], aligned to item indices.

    Args:
        model: a trained fusion encoder.
        outputs: encoder outputs of the same modalities the model was trained on.
        drop: user-facing or model modality name -> bool [n_items]; flagged items are
            encoded without that modality (the mask-modality protocol).
        batch_size: items per forward pass.
        centre: subtract the stored mean output (when the config asks for it).
        device: where to run the model (default: where its weights are).
    """
    layout = ModalityLayout.of(outputs)
    if layout.modalities != model.layout.modalities:
        raise DataError(
            f"the fusion encoder was trained on modalities {model.layout.modalities}, "
            f"the encoder outputs have {layout.modalities}"
        )
    drop_keys = {resolve_modality(layout, m): np.asarray(f, bool) for m, f in (drop or {}).items()}
    was_training = model.training
    model.eval()
    device = torch_device(device) if device is not None else model.output_mean.device
    model.to(device)
    out = np.zeros((outputs.n_items, model.output_dim), np.float32)
    try:
        for start in range(0, outputs.n_items, batch_size):
            idx = np.arange(start, min(start + batch_size, outputs.n_items))
            batch = collate(
                outputs, idx, max_text_tokens=model.config.max_text_tokens, drop=drop_keys
            )
            out[idx] = model.embed(batch.to(device), centre=centre).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def save_fusion(model: FusionEncoder, folder: str | Path) -> Path:
    """Write the encoder (state_dict + config + layout) into ``folder``, atomically."""
    from alignrec.io import atomic_path

    folder = Path(folder)
    with atomic_path(folder, is_dir=True) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS_FILE)
        meta = {"config": model.config.to_dict(), "layout": asdict(model.layout), "format": 2}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def load_fusion(folder: str | Path) -> FusionEncoder:
    """Rebuild a fusion encoder written by :func:`save_fusion` (eval mode)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder}: not a saved fusion encoder ({exc})") from exc
    values = dict(meta["config"])
    if meta.get("format", 1) < 2:  # saved before the residual readout and reconstruction heads
        values = {"readout": "fused", "recon_weight": 0.0, "image_mask_block": 1, **values}
    model = FusionEncoder(FusionConfig.from_dict(values), ModalityLayout(**meta["layout"]))
    state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def feature_names(modalities: Sequence[str]) -> str:
    """Human-readable description of a modality list (for logs and metadata)."""
    return "+".join(modalities)
