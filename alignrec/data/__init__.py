"""The data layer: dataset specs, readers, splits and the canonical tables."""

from alignrec.data.dataset import SPLITS, Dataset, read_dataset
from alignrec.data.prepare import load_dataset, prepare
from alignrec.data.registry import get_spec, list_datasets

__all__ = ["SPLITS", "Dataset", "get_spec", "list_datasets", "load_dataset", "prepare", "read_dataset"]
