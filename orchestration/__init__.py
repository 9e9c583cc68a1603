"""Dagster orchestration of the AlignRec pipeline. Thin: assets call the ``alignrec`` library."""

import warnings

# The asset checks are partitioned like the assets they check, which Dagster flags as a preview
# feature at definition time: once per process, so once per step under the multiprocess executor.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
