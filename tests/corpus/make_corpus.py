"""Regenerate the broken-input corpus: `python tests/corpus/make_corpus.py` (see README.md)."""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent

YAML = """\
name: {name}
root: .
interactions:
  path: interactions.csv
  columns: {{user: user, item: item, timestamp: timestamp}}
items:
  path: items.csv
  id_column: item
  text_columns: [title, description]
images:
  dir: images
features:
  tags: {{path: tags.npy, ids: tags_ids.txt}}
"""


def make_base(base: Path) -> None:
    if base.exists():
        shutil.rmtree(base)
    base.mkdir()
    rows, t = ["user,item,timestamp"], 1000
    for u in range(1, 5):
        for i in range(1, 6):
            if (u + i) % 5:
                rows.append(f"{u},{i},{t}")
                t += 1
    (base / "interactions.csv").write_text("\n".join(rows) + "\n")
    (base / "items.csv").write_text(
        "item,title,description\n1,Red kite,a bird of prey\n2,Blue whale,largest animal\n"
        "3,Green tea,a drink\n4,Grey owl,night bird\n5,Pink salmon,a fish\n"
    )
    (base / "images").mkdir()
    for i in range(1, 6):
        Image.new("RGB", (8, 8), (40 * i, 20, 200 - 30 * i)).save(base / "images" / f"{i}.jpg")
    np.save(base / "tags.npy", np.arange(15, dtype=np.float32).reshape(5, 3))
    (base / "tags_ids.txt").write_text("1\n2\n3\n4\n5\n")
    (base / "dataset.yaml").write_text(YAML.format(name="base"))


def case(name, fn):
    d = HERE / name
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(HERE / "base", d)
    (d / "dataset.yaml").write_text(YAML.format(name=name))
    fn(d)


def edit_rows(d: Path, fn) -> None:
    lines = (d / "interactions.csv").read_text().splitlines()
    fn(lines)
    (d / "interactions.csv").write_text("\n".join(lines) + "\n")


def set_field(lines, row, col, value):
    parts = lines[row].split(",")
    parts[col] = value
    lines[row] = ",".join(parts)


def replace(d: Path, name: str, old: bytes, new: bytes) -> None:
    (d / name).write_bytes((d / name).read_bytes().replace(old, new))


def main() -> None:
    make_base(HERE / "base")
    case("truncated_row", lambda d: edit_rows(d, lambda ls: ls.__setitem__(3, ",".join(ls[3].split(",")[:2]))))
    case("nonnumeric_id", lambda d: edit_rows(d, lambda ls: set_field(ls, 5, 0, "u7")))
    case("empty_id", lambda d: edit_rows(d, lambda ls: set_field(ls, 2, 1, "")))
    case("duplicated_rows", lambda d: edit_rows(d, lambda ls: ls.extend([ls[1], ls[4]])))
    case("unknown_item", lambda d: edit_rows(d, lambda ls: set_field(ls, 6, 1, "99")))
    case("corrupt_jpeg", lambda d: (d / "images" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg"))
    case("empty_text", lambda d: replace(d, "items.csv", b"4,Grey owl,night bird", b"4,,"))
    case("non_utf8_text", lambda d: replace(d, "items.csv", b"Blue whale", b"Blue wh\xe4le"))

    def nan_feature(d):
        a = np.load(d / "tags.npy")
        a[1, 1] = np.nan
        np.save(d / "tags.npy", a)

    case("nan_feature", nan_feature)
    case("wrong_rows_feature", lambda d: np.save(d / "tags.npy", np.load(d / "tags.npy")[:4]))
    case("missing_file", lambda d: (d / "items.csv").unlink())
    case("misspelled_key", lambda d: replace(d, "dataset.yaml", b"interactions:", b"interations:"))
    case("utf8_bom", add_bom)
    case("all_filtered", lambda d: append(d, "dataset.yaml", "split: {core: 10}\n"))
    case("no_train_users", lambda d: edit_rows(d, keep_one_row_per_user))
    case("one_item", one_item)


def append(d: Path, name: str, text: str) -> None:
    (d / name).write_text((d / name).read_text() + text)


def keep_one_row_per_user(lines) -> None:
    """One interaction per user: the random split sends it to validation, leaving no train."""
    seen, kept = set(), [lines[0]]
    for line in lines[1:]:
        if line.split(",")[0] not in seen:
            seen.add(line.split(",")[0])
            kept.append(line)
    lines[:] = kept


def one_item(d: Path) -> None:
    """Every interaction names item 1, in a shipped split that is all train."""
    rows = ["user,item,timestamp,fold"] + [f"{u},1,{1000 + u},0" for u in range(1, 5)]
    (d / "interactions.csv").write_text("\n".join(rows) + "\n")
    columns = b"  columns: {user: user, item: item, timestamp: timestamp}\n"
    split = b"  split_column: fold\n  split_labels: {'0': train, '1': valid, '2': test}\n"
    replace(d, "dataset.yaml", columns, columns + split)


def add_bom(d: Path) -> None:
    """A spreadsheet export: UTF-8 files that start with a byte-order mark."""
    for name in ("interactions.csv", "items.csv"):
        (d / name).write_bytes(b"\xef\xbb\xbf" + (d / name).read_bytes())


if __name__ == "__main__":
    main()
