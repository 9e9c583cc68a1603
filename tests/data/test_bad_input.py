"""The broken-input corpus (tests/corpus): every case fails clearly or falls back, counted."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from alignrec.data import prepare
from alignrec.errors import ConfigError, DataError
from alignrec.paths import dataset_tables
from tests.conftest import CORPUS


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A writable copy of the corpus, registered as datasets named after the folders."""
    root = tmp_path / "corpus"
    shutil.copytree(CORPUS, root)
    specs = tmp_path / "specs"
    specs.mkdir()
    for case in root.iterdir():
        if (case / "dataset.yaml").is_file():
            text = (case / "dataset.yaml").read_text().replace("root: .", f"root: {case}")
            (specs / f"{case.name}.yaml").write_text(text)
    monkeypatch.setenv("ALIGNREC_DATASETS", str(specs))
    monkeypatch.setenv("ALIGNREC_DATA_ROOTS", str(root))
    return root


def error_of(name: str, kind=DataError) -> str:
    with pytest.raises(kind) as info:
        prepare(name)
    assert not (dataset_tables(name) / "meta.json").exists(), "a failed prepare wrote output"
    return str(info.value)


def test_base_is_clean(corpus):
    ds = prepare("base")
    assert ds.summary()["interactions"] == 16
    assert sum(ds.meta["fallbacks"].values()) == 0
    assert ds.features["tags"].shape == (5, 3)


@pytest.mark.parametrize(
    ("case", "parts"),
    [
        ("truncated_row", ["interactions.csv", "row 3", "truncated row"]),
        ("nonnumeric_id", ["interactions.csv", "row 5", "field 'user'", "'u7' is not an integer"]),
        ("empty_id", ["interactions.csv", "row 2", "field 'item'", "empty id"]),
        ("unknown_item", ["interactions.csv", "row 6", "field 'item'", "'99'", "not in the items file"]),
        ("non_utf8_text", ["items.csv", "row 2", "not valid utf-8"]),
        ("nan_feature", ["tags.npy", "row 2", "field 'column 1'", "not finite"]),
        ("wrong_rows_feature", ["tags.npy", "4 rows", "names 5 ids"]),
        ("missing_file", ["items.csv", "file not found"]),
        ("all_filtered", ["interactions.csv", "no interactions left after the 10-core filter",
                          "'split.core'", "all_filtered.yaml"]),
        ("no_train_users", ["interactions.csv", "0 users", "none of the 4 users has a training"]),
        ("one_item", ["interactions.csv", "1 item(s)", "at least 2 items"]),
    ],
)
def test_errors_name_file_row_and_field(corpus, case, parts):
    message = error_of(case)
    for part in parts:
        assert part in message, f"{part!r} missing from: {message}"
    assert str(corpus / case) in message


def test_misspelled_key_names_key_and_suggests(corpus):
    message = error_of("misspelled_key", ConfigError)
    assert "misspelled_key.yaml" in message
    assert "unknown key 'interations'" in message
    assert "did you mean 'interactions'" in message


def test_unknown_dataset_lists_known_ones(corpus):
    message = error_of("bsae", ConfigError)
    assert "unknown dataset 'bsae'" in message
    assert "Did you mean 'base'" in message
    # How a dataset becomes a Dagster partition: the variable where Dagster runs, a restart.
    assert f"ALIGNREC_DATASETS={corpus.parent / 'specs'} here" in message
    assert "Dagster reads its dataset partitions when the code location loads" in message
    assert "restart it" in message


def test_check_registered_says_how_to_register(monkeypatch, capsys):
    from alignrec.data.registry import check_registered

    monkeypatch.delenv("ALIGNREC_DATASETS", raising=False)
    assert check_registered("synthetic") == 0
    assert check_registered("my-shop") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'my-shop'")
    assert "ALIGNREC_DATASETS is unset here" in err and "reload the code location" in err


def test_wrong_config_value(corpus):
    spec = corpus / "base" / "dataset.yaml"
    text = spec.read_text().replace(f"root: {corpus / 'base'}", "")
    bad = spec.with_name("bad.yaml")
    bad.write_text(text + "split: {core: -2}\n")
    from alignrec.data.spec import load_spec

    with pytest.raises(ConfigError) as info:
        load_spec(bad)
    assert "split.core" in str(info.value) and "bad.yaml" in str(info.value)


def test_utf8_byte_order_mark_is_accepted(corpus):
    ds = prepare("utf8_bom")
    base = prepare("base")
    assert ds.summary() == base.summary()
    assert ds.items["item_id"].tolist() == base.items["item_id"].tolist()
    assert ds.items["text"].tolist() == base.items["text"].tolist()


def test_byte_order_mark_before_a_headerless_id(tmp_path):
    from alignrec.data.readers import read_table

    path = tmp_path / "u.tsv"
    path.write_bytes(b"\xef\xbb\xbf1\t2\n3\t4\n")
    table = read_table(path, sep="\t", header=False, encoding="utf-8", required=[0, 1])
    assert table[0].tolist() == ["1", "3"]


def test_bad_byte_after_a_byte_order_mark_names_its_offset(tmp_path):
    from alignrec.data.readers import read_text

    path = tmp_path / "items.csv"
    path.write_bytes(b"\xef\xbb\xbfitem\n1\xe4\n")
    with pytest.raises(DataError) as info:
        read_text(path, "utf-8")
    assert "byte 0xe4 at offset 9" in str(info.value) and "row 1" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("root: .", "root: /etc"), "root"),
        (("root: .", "root: ../../.."), "root"),
        (("path: interactions.csv", "path: ../../../../../etc/passwd"), "interactions.path"),
        (("path: interactions.csv", "path: /etc/passwd"), "interactions.path"),
        (("path: items.csv", "path: ../outside/items.csv"), "items.path"),
        (("dir: images", "dir: /etc"), "images.dir"),
        (("tags.npy, ids", "../../tags.npy, ids"), "features.tags.path"),
    ],
)
def test_paths_that_escape_the_data_folders_are_refused(tmp_path, monkeypatch, edit, key):
    from alignrec.data.spec import load_spec

    monkeypatch.delenv("ALIGNREC_DATA_ROOTS", raising=False)
    case = tmp_path / "shop"
    shutil.copytree(CORPUS / "base", case)
    yaml_file = case / "dataset.yaml"
    yaml_file.write_text(yaml_file.read_text().replace(*edit))
    with pytest.raises(ConfigError) as info:
        load_spec(yaml_file)
    message = str(info.value)
    assert str(yaml_file) in message and f"key {key!r}" in message, message
    assert "outside the folders a dataset may read" in message and "ALIGNREC_DATA_ROOTS" in message


def test_a_symlink_out_of_the_yaml_folder_is_refused(tmp_path, monkeypatch):
    from alignrec.data.spec import load_spec

    monkeypatch.delenv("ALIGNREC_DATA_ROOTS", raising=False)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "files").symlink_to(CORPUS / "base")
    (specs / "shop.yaml").write_text(
        (CORPUS / "base" / "dataset.yaml").read_text().replace("root: .", "root: files")
    )
    with pytest.raises(ConfigError, match="key 'root'"):
        load_spec(specs / "shop.yaml")


def test_data_roots_allow_a_folder_outside_the_yaml_folder(tmp_path, monkeypatch):
    from alignrec.data.spec import load_spec

    files = tmp_path / "files"
    shutil.copytree(CORPUS / "base", files)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "shop.yaml").write_text(
        (files / "dataset.yaml").read_text().replace("root: .", "root: ../files")
    )
    monkeypatch.delenv("ALIGNREC_DATA_ROOTS", raising=False)
    with pytest.raises(ConfigError, match="key 'root'"):
        load_spec(specs / "shop.yaml")
    monkeypatch.setenv("ALIGNREC_DATA_ROOTS", str(files))
    assert load_spec(specs / "shop.yaml").root == files.resolve()


def test_shipped_specs_read_only_the_project_data_folder(monkeypatch):
    from alignrec.data.registry import get_spec, list_datasets
    from alignrec.paths import PROJECT_ROOT

    monkeypatch.delenv("ALIGNREC_DATASETS", raising=False)
    monkeypatch.delenv("ALIGNREC_DATA_ROOTS", raising=False)
    for name in list_datasets():
        spec = get_spec(name)  # `root: ../data/<name>` is allowed
        assert spec.synthetic is not None or spec.root.is_relative_to(PROJECT_ROOT / "data")


def test_duplicated_rows_are_dropped_and_counted(corpus):
    ds = prepare("duplicated_rows")
    assert ds.meta["fallbacks"]["duplicate_interactions_dropped"] == 2
    assert ds.summary()["interactions"] == 16
    assert not ds.interactions.duplicated(["user", "item"]).any()


def test_corrupt_jpeg_falls_back_to_no_image(corpus, caplog):
    ds = prepare("corrupt_jpeg")
    assert ds.meta["fallbacks"]["images_corrupt"] == 1
    by_id = dict(zip(ds.items["item_id"], ds.items["image"], strict=True))
    assert pd.isna(by_id["3"]) and isinstance(by_id["2"], str)
    assert any("3.jpg" in r.getMessage() and "does not decode" in r.getMessage() for r in caplog.records)


def test_empty_text_falls_back_and_is_counted(corpus):
    ds = prepare("empty_text")
    assert ds.meta["fallbacks"]["items_with_empty_text"] == 1
    assert ds.items.set_index("item_id").loc["4", "text"] == ""


def test_failed_prepare_keeps_last_good_tables(corpus):
    good = prepare("base")
    meta_before = (dataset_tables("base") / "meta.json").read_text()
    # Break the data after a good build: the rebuild fails and the old tables stay.
    (corpus / "base" / "interactions.csv").write_text("user,item,timestamp\n1,2\n")
    with pytest.raises(DataError):
        prepare("base")
    assert (dataset_tables("base") / "meta.json").read_text() == meta_before
    assert json.loads(meta_before)["interactions"] == good.summary()["interactions"]
    leftovers = [p.name for p in dataset_tables("base").parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
