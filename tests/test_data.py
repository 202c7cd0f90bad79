"""Dataset scanning, the held-out rule and evaluation subsets."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from shared.data import is_heldout, scan_images, split_items, spread


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def test_class_folders_csv_and_plain_folders(tmp_path):
    for c in ("cat", "dog"):
        for i in range(3):
            _img(tmp_path / "tree" / c / f"{c}{i}.png")
    items = scan_images(tmp_path / "tree")
    assert [lab for _, lab in items] == [0, 0, 0, 1, 1, 1]
    assert all(lab is None for _, lab in scan_images(tmp_path / "tree", labels=False))

    _img(tmp_path / "csv" / "images" / "a.png")
    (tmp_path / "csv" / "labels.csv").write_text("filename,class_index\na.png,7\n")
    assert scan_images(tmp_path / "csv") == [(tmp_path / "csv" / "images" / "a.png", 7)]

    _img(tmp_path / "plain" / "sub" / "x.png")  # images beside sub-folders: an unlabelled folder, recursively
    _img(tmp_path / "plain" / "y.png")
    assert scan_images(tmp_path / "plain") == [(tmp_path / "plain" / "sub" / "x.png", None),
                                               (tmp_path / "plain" / "y.png", None)]


def test_heldout_rule_depends_on_the_file_name_only(tmp_path):
    names = [f"img_{i:03d}.png" for i in range(200)]
    held = [n for n in names if is_heldout(n)]
    assert 60 < len(held) < 140
    assert all(is_heldout(tmp_path / "any" / "folder" / n) for n in held)
    items = [(Path(n), None) for n in names]
    train, test = split_items(items, "train"), split_items(items, "heldout")
    assert not set(train) & set(test) and len(train) + len(test) == len(items)


def test_spread_covers_every_class():
    items = [(Path(f"c{c}/{i}.png"), c) for c in range(10) for i in range(50)]
    sub = spread(items, 100)
    assert len(sub) == 100
    assert {lab for _, lab in sub} == set(range(10))
    assert spread(items, 0) == items and spread(items, 10_000) == items
