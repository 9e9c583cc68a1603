"""One static partition per registered dataset."""

from __future__ import annotations

import dagster as dg

from alignrec.data.registry import list_datasets

dataset_partitions = dg.StaticPartitionsDefinition(list(list_datasets()))
