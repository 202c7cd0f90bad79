"""``splitinfer demo`` runs the real round trip (server on loopback, edge client) and stops cleanly."""

from __future__ import annotations

import re
import shutil

from shared.cli import main


def test_demo_round_trip_through_a_real_server(tiny_bundle, tiny_weights, tiny_images, tmp_path, capsys):
    folder = tmp_path / "samples"
    folder.mkdir()
    names = sorted(p.name for p in tiny_images.iterdir())[:3]
    lines = ["filename,class_index"]
    for i, n in enumerate(names):
        shutil.copy(tiny_images / n, folder / n)
        lines.append(f"{n},{i}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    hints = ",".join(f"{r.bpp:.6f}" for r in tiny_bundle.rungs)
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
    assert main(argv + ["--rest"]) == 0
    assert "connected over REST" in capsys.readouterr().out


def test_demo_help_says_what_it_does(capsys):
    try:
        main(["demo", "--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "--bitrates" in capsys.readouterr().out
