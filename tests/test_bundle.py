"""Merging rungs of compatible bundles into one ladder (the shipped ladder is assembled this way)."""

from __future__ import annotations

import json

import pytest
import torch

from shared.bundle import BundleError, load_bundle, merge_bundles
from splitinfer.cli import main


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
    # one source: its training record stays (samples seen, recipe), so training continues from the re-export
    assert out.training == {**src.training, "merged_from": [src.bundle_id]} and out.training["samples_seen"] > 0


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


def test_ladder_refuses_backbone_weights_it_was_not_trained_against(tiny_bundle, tiny_model, tiny_weights,
                                                                    tiny_images, tmp_path, capsys):
    """`splitinfer train` records the head's and the tail's weight fingerprints; edge, cloud and eval refuse
    other weights (a re-trained teacher, a fine-tuned backbone) with a message, and accept the right ones."""
    import torch
    from safetensors.torch import load_file, save_file

    from cloud_server.decoder import CloudDecoder
    from shared.encoder import EdgeEncoder
    from shared.models import load_split_model
    from shared.models.split import weights_fingerprint

    assert tiny_bundle.manifest["backbone_weights"] == tiny_model.fingerprints()
    tiny_bundle.check_backbone(tiny_model)  # the weights it was trained with
    assert weights_fingerprint(tiny_model.head) == weights_fingerprint(load_split_model(
        "cifar_resnet20", tiny_bundle.split, weights=str(tiny_weights)).head)  # a fresh load hashes the same

    # one tail weight nudged: the head still fits (the edge accepts it), the tail does not
    sd = load_file(str(tiny_weights))
    key = "linear.weight"
    sd[key] = sd[key].clone()
    sd[key][0, 0] += 1e-3
    other = tmp_path / "other.safetensors"
    save_file(sd, str(other))
    model = load_split_model("cifar_resnet20", tiny_bundle.split, weights=str(other))
    assert model.fingerprints()["head"] == tiny_model.fingerprints()["head"]
    assert model.fingerprints()["tail"] != tiny_model.fingerprints()["tail"]
    EdgeEncoder(tiny_bundle, weights=str(other))
    with pytest.raises(BundleError, match="trained against other cifar_resnet20 weights.*tail"):
        CloudDecoder(tiny_bundle, weights=str(other))
    assert main(["eval", "--bundle", str(tiny_bundle.root), "--data", str(tiny_images), "--weights", str(other),
                 "--limit", "2"]) == 2
    assert "splitinfer train" in capsys.readouterr().err


def test_transforms_in_float16_halve_the_rung_and_load_as_float32(tiny_bundle, tmp_path):
    """``transforms_dtype="float16"``: g_a/g_s weights stored in half precision (the bulk of a deep rung),
    loaded back as float32; the entropy model and its tables are stored exactly as before; a merge of such a
    ladder keeps the precision unless told otherwise."""
    from safetensors import safe_open

    half = merge_bundles(tmp_path / "half", [(tiny_bundle, 0)], transforms_dtype="float16")
    full = merge_bundles(tmp_path / "full", [(tiny_bundle, 0)])
    assert half.manifest["transforms_dtype"] == "float16" and "transforms_dtype" not in full.manifest
    with safe_open(str(half.root / half.rungs[0].file), "pt") as fh, safe_open(str(full.root / full.rungs[0].file), "pt") as ff:
        for k in ff.keys():
            want = torch.float16 if k.split(".")[0] in ("g_a", "g_s") and ff.get_tensor(k).is_floating_point() \
                else ff.get_tensor(k).dtype
            assert fh.get_tensor(k).dtype == want, k
            if not k.startswith(("g_a.", "g_s.")):
                assert torch.equal(fh.get_tensor(k), ff.get_tensor(k)), k
    net = half.load_rung(0)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    ref = full.load_rung(0).state_dict()
    for k, v in net.state_dict().items():
        if k.startswith("g_s."):
            assert torch.allclose(v, ref[k], rtol=1e-3, atol=1e-4), k
    assert merge_bundles(tmp_path / "again", [(half, 0)]).manifest["transforms_dtype"] == "float16"
    with pytest.raises(ValueError, match="float32 or float16"):
        merge_bundles(tmp_path / "bad", [(tiny_bundle, 0)], transforms_dtype="int8")
