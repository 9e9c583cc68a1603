"""The code digest that keys a benchmark run: which modules decide a model's result."""

from __future__ import annotations

from alignrec.benchmark import code


def test_the_closure_of_a_model_holds_its_module_and_the_trainer_but_not_other_models():
    names = code.closure(["alignrec.models.lightgcn", *code.TRAINING_ROOTS])
    assert {"alignrec.models.lightgcn", "alignrec.models.base", "alignrec.training.trainer",
            "alignrec.evaluation.evaluator", "alignrec.training.grid"} <= set(names)
    assert "alignrec.models.alignrec" not in names and "alignrec.models.mgcn" not in names
    assert not set(names) & code.NEUTRAL


def test_import_lines_are_read_with_submodules_and_parenthesised_names():
    source = (
        "from alignrec.models.base import (\n    InnerProductModel,\n    part,\n)\n"
        "import alignrec.similarity\nfrom alignrec.models import sparse, base\n"
        "x = 'from alignrec.io import write_json'  # not at the start of a line\n"
    )
    assert code.imported_modules(source) == {
        "alignrec.models.base", "alignrec.similarity", "alignrec.models",
        "alignrec.models.sparse",
    }


def test_the_digest_follows_the_source_of_every_module_in_the_closure(monkeypatch, tmp_path):
    before = code.code_digest("alignrec.models.bpr")
    assert before == code.model_code_digest("bpr") and before != code.model_code_digest("lightgcn")
    original = code.module_file
    copy = tmp_path / "base.py"
    copy.write_text(original("alignrec.models.base").read_text() + "\n# changed\n")
    monkeypatch.setattr(
        code, "module_file", lambda n: copy if n == "alignrec.models.base" else original(n)
    )
    code.closure_digest.cache_clear()
    try:
        assert code.code_digest("alignrec.models.bpr") != before
    finally:
        code.closure_digest.cache_clear()
