"""``splitinfer demo`` runs the real round trip (server on loopback, edge client) and stops cleanly."""

from __future__ import annotations

import re
import shutil

from splitinfer.cli import main


def test_demo_round_trip_through_a_real_server(tiny_bundle, tiny_weights, tiny_images, tmp_path, capsys):
    folder = tmp_path / "samples"
    folder.mkdir()
    names = sorted(p.name for p in tiny_images.iterdir())[:3]
    lines = ["filename,class_index"]
    for i, n in enumerate(names):
        shutil.copy(tiny_images / n, folder / n)
        lines.append(f"{n},{i}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    hints = ",".join(repr(r.bpp) for r in tiny_bundle.rungs)  # exact: "%.6f" can round a bpp below itself
    argv = ["demo", "--bundle", str(tiny_bundle.root), "--weights", str(tiny_weights), "--images", str(folder),
            "--bitrates", hints]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "edge clients connected over gRPC" in out
    assert "server stopped cleanly" in out
    for n in names:
        assert n in out
    # one row per image and hint; every hint equal to a rung's measured bpp selects that rung
    rows = [line for line in out.splitlines() if re.search(r"\s(ok|--) ", line)]
    assert len(rows) == len(names) * len(tiny_bundle.rungs)
    rungs = [int(re.search(r"\s(\d+)\s+\d+\s+\d+\.\d{3}\s", r).group(1)) for r in rows]
    assert rungs == list(range(len(tiny_bundle.rungs))) * len(names)
    assert "bytes per image on average" in out
    assert "'<' after the bpp: the message is within its hint" in out and f"{tiny_bundle.split}: rung" in out
    assert main(argv + ["--rest"]) == 0
    assert "connected over REST" in capsys.readouterr().out


def test_demo_help_says_what_it_does(capsys):
    try:
        main(["demo", "--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "--bitrates" in capsys.readouterr().out


def test_demo_meets_each_hint_per_image_with_a_variable_rate_bundle(vr_bundle, tiny_weights, tiny_images, tmp_path,
                                                                    capsys):
    folder = tmp_path / "samples"
    folder.mkdir()
    names = sorted(p.name for p in tiny_images.iterdir())[:4]
    (folder / "labels.csv").write_text("filename,class_index\n" + "".join(f"{n},{i}\n" for i, n in enumerate(names)))
    for n in names:
        shutil.copy(tiny_images / n, folder / n)
    curve = vr_bundle.manifest["variable_rate"]["curve"]
    hints = [curve[0]["bpp"] * 1.3, curve[len(curve) // 2]["bpp"], curve[-1]["bpp"]]
    argv = ["demo", "--bundle", str(vr_bundle.root), "--weights", str(tiny_weights), "--images", str(folder),
            "--bitrates", ",".join(f"{h:.6f}" for h in hints)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "one variable-rate network, levels" in out
    rows = [line for line in out.splitlines() if re.search(r"\s(ok|--) ", line)]
    assert len(rows) == len(names) * len(hints)
    # each row: the level rate control chose and '<' (within the hint); every message fits its hint
    cells = [re.search(r"\sq(-?\d+)\s+(\d+)\s+(\d+\.\d{3}) (<| )", r) for r in rows]
    assert all(c and c.group(4) == "<" for c in cells), rows
    assert f"{len(rows)}/{len(rows)} messages within their hint" in out
    # the variable-rate network's column is headed as such, and its '<' mark is explained
    assert f"{vr_bundle.split[-9:]} vr: rung" in out and "'<' after the bpp: the message is within its hint" in out
