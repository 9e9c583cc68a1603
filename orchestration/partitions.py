"""One static partition per registered dataset.

The partitions are read once, when the code location loads: a dataset added through
``ALIGNREC_DATASETS`` is a partition only where that variable is set in the environment of
the process that loads the definitions (``make ui``, ``dagster dev``, the DVC stages), and only
after the code location is restarted (or reloaded, for a new YAML in a folder already listed).
"""

from __future__ import annotations

import dagster as dg

from alignrec.data.registry import list_datasets

dataset_partitions = dg.StaticPartitionsDefinition(list(list_datasets()))
