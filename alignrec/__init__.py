"""AlignRec: multimodal recommendation with aligned content, IDs, users and items.

The library is plain Python (numpy, pandas, torch). It knows nothing of the
orchestration (Dagster), data versioning (DVC) or validation (Great Expectations)
layers built around it.
"""

__version__ = "0.1.0"
