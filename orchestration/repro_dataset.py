"""``make repro DATASET=NAME`` checks NAME here before it sets params.yaml's dataset.

``python -m orchestration.repro_dataset NAME`` exits 0 when the DVC pipeline can build NAME,
else 2 with the reason on stderr: NAME is not registered, or it has no item content (text,
images or feature vectors), so stage 1, the protocols and AlignRec are skipped and DVC would
miss their outputs; ``make pipeline DATASET=NAME`` builds such a dataset. Nothing is written.
(Kept out of dvc_stage.py, which every DVC stage depends on.)
"""

from __future__ import annotations

import sys

from alignrec.data.registry import check_registered, get_spec


def check(name: str) -> int:
    status = check_registered(name)
    if status:
        return status
    spec = get_spec(name)
    if spec.items is None and spec.images is None and not spec.features and spec.synthetic is None:
        print(
            f"error: dataset {name!r} has no item content (text, images or feature vectors): the "
            "DVC pipeline's stage1, protocols and stage2@alignrec stages would have no outputs. "
            f"Build it with `make pipeline DATASET={name}`.",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(check(sys.argv[1]))
