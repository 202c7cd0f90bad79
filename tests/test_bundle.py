"""Merging rungs of compatible bundles into one ladder (the shipped ladder is assembled this way)."""

from __future__ import annotations

import json

import pytest

from shared.bundle import BundleError, load_bundle, merge_bundles
from shared.cli import main


def test_merge_orders_by_bpp_reexports_and_keeps_provenance(tiny_bundle, tmp_path):
    src = tiny_bundle
    out = merge_bundles(tmp_path / "merged", [(src, 2), (src, 0)])
    assert [r.metrics["source"]["rung"] for r in out.rungs] == [0, 2]  # highest measured bpp first
    assert out.bundle_id != src.bundle_id
    assert "evaluation" not in out.manifest  # re-exported rungs must be measured again
    for r in out.rungs:
        assert r.metrics["source"]["bundle_id"] == src.bundle_id
        net = out.load_rung(r.index)  # hashes verified, tables loaded
        assert net.rate.entropy_models()[0]._quantized_cdf.numel() > 0
    assert out.manifest["feature_stride"] == src.manifest["feature_stride"]


def test_merge_refuses_incompatible_bundles(tiny_bundle, tmp_path):
    src = tiny_bundle
    other = tmp_path / "other"
    other.mkdir()
    m = json.loads((tiny_bundle.root / "manifest.json").read_text())
    for r in m["rungs"]:
        (other / r["file"]).write_bytes((tiny_bundle.root / r["file"]).read_bytes())
    m["config"]["means"] = not m["config"]["means"]
    from shared.bundle import _bundle_id

    m["bundle_id"] = _bundle_id(m["model"], m["split"], m["config"], [r["sha256"] for r in m["rungs"]])
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="not compatible"):
        merge_bundles(tmp_path / "merged", [(src, 0), (load_bundle(other), 1)])


def test_merge_command(tiny_bundle, tmp_path, capsys):
    assert main(["merge", str(tmp_path / "m"), f"{tiny_bundle.root}:0,1"]) == 0
    assert "with 2 rungs" in capsys.readouterr().out
    assert len(load_bundle(tmp_path / "m").rungs) == 2


def test_missing_bundle_is_a_clean_cli_error(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_export_is_byte_reproducible_across_processes(tiny_bundle, tmp_path):
    """The bundle id hashes the rung files, so exporting the same weights twice must give the same bytes
    (safetensors orders a multi-key metadata map differently from one process to the next)."""
    import subprocess
    import sys

    code = ("import sys; from shared.bundle import load_bundle, merge_bundles; "
            "b = load_bundle(sys.argv[1]); print(merge_bundles(sys.argv[2], [(b, 0), (b, 1)]).bundle_id)")
    ids = {subprocess.run([sys.executable, "-c", code, str(tiny_bundle.root), str(tmp_path / f"m{k}")],
                          capture_output=True, text=True, check=True).stdout.strip() for k in range(3)}
    assert len(ids) == 1
