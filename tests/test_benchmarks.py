"""``benchmarks/codec_overhead.py`` runs end to end on the tiny bundle (a trained split and an untrained one)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "codec_overhead.py"


def _benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def codec_overhead():
    return _benchmark("codec_overhead")


def test_help(codec_overhead, capsys):
    with pytest.raises(SystemExit) as e:
        codec_overhead.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--bundle", "--rung", "--splits", "--weights", "--images", "--repeats", "--threads", "--json"):
        assert opt in out


def test_codec_overhead_on_tiny_bundle(codec_overhead, tiny_bundle, tiny_weights, tiny_images, tmp_path, capsys):
    path = tmp_path / "overhead.json"
    rc = codec_overhead.main([
        "--bundle", str(tiny_bundle.root), "--weights", str(tiny_weights), "--images", str(tiny_images),
        "--max-images", "3", "--repeats", "2", "--warmup", "1", "--rung", "1", "--splits", "stem,layer1",
        "--json", str(path),
    ])
    assert rc == 0
    out = capsys.readouterr().out
    assert "torch.set_num_threads(1)" in out
    assert "UNTRAINED" in out and "only indicative" in out
    assert "edge ratio goal <= 1.15 at the shallow split (stem, UNTRAINED bottleneck):" in out
    assert "cloud ratio goal <= 1.15 at the shallow split" in out

    res = json.loads(path.read_text())
    assert res["setup"]["threads"] == 1 and res["setup"]["batch"] == 1 and res["setup"]["n_images"] == 3
    splits = res["splits"]
    assert [(r["split"], r["trained"], r["rung"]) for r in splits] == [("layer1", True, 1), ("stem", False, 0)]
    for r in splits:
        assert all(v > 0 for v in r["timings_ms"].values()), r["timings_ms"]
        assert r["timings_ms"]["edge_total"] > 0 and r["timings_ms"]["cloud_total"] > 0
        assert r["edge_ratio"] > 0 and r["cloud_ratio"] > 0
        assert r["encode_symbols_per_s"] > 0 and r["decode_symbols_per_s"] > 0
        assert 0 < r["cloud_entropy_decode_share"]  # medians of 2 repeats on a busy machine: no upper bound
        assert r["symbols"]["total"] == r["symbols"]["y"] + r["symbols"]["z"] > 0
        assert r["bytes_per_image"] > 0
        for part in ("head", "edge_codec", "cloud_codec", "tail"):
            assert r["compute"][part]["params"] > 0 and r["compute"][part]["macs"] > 0
    # the shallow split is the goal's reference
    assert res["goals"]["edge"]["split"] == "stem" and res["goals"]["edge"]["ratio"] == splits[1]["edge_ratio"]


def test_bad_split_is_an_error(codec_overhead, tiny_bundle, tiny_weights, tiny_images, capsys):
    rc = codec_overhead.main(["--bundle", str(tiny_bundle.root), "--weights", str(tiny_weights),
                              "--images", str(tiny_images), "--splits", "nope"])
    assert rc == 2
    assert "unknown split point" in capsys.readouterr().err


def test_rung_switch_benchmark_reports_switch_reload_and_memory(tmp_path):
    rung_switch = _benchmark("rung_switch")
    out = tmp_path / "rs.json"
    assert rung_switch.main(["--repeats", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["switch_backbone_bytes"] == 0
    assert 0 < res["switch_ms_median"] and 0 < res["reload_ms_median"]
    assert 0 < res["resident_switch_ms_median"] < res["switch_ms_median"]
    assert res["reload_bytes"] > res["switch_bytes_median"] > 0
    assert res["peak_rss_mb_backbone_and_ladder"] >= res["peak_rss_mb_backbone"] > 0


def test_cross_device_decode_smoke(tmp_path, capsys):
    """The cross-device script runs on the CPU (both sides share arithmetic: every count is 0)."""
    cross_device_decode = _benchmark("cross_device_decode")
    out = tmp_path / "x.json"
    assert cross_device_decode.main(["--limit", "3", "--device", "cpu", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["setup"]["n_images"] == 3 and res["setup"]["decode"] == "cpu"
    assert res["integer_wrong_decodes"] == 0 and res["float_wrong_decodes"] == 0
    assert "decoded wrong on cpu" in capsys.readouterr().out


def test_edge_runtime_benchmark_on_tiny_bundle(tiny_bundle, tiny_weights, tiny_images, tmp_path, capsys):
    """``benchmarks/edge_runtime.py`` end to end: timings of both edges, agreement, start-up, sizes."""
    mod = _benchmark("edge_runtime")
    path = tmp_path / "edge.json"
    assert mod.main(["--bundles", str(tiny_bundle.root), "--weights", str(tiny_weights), "--images", str(tiny_images),
                     "--max-images", "3", "--repeats", "2", "--warmup", "1", "--starts", "1", "--threads", "1",
                     "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "per frame vs PyTorch edge" in out and "process start -> first frame" in out
    rep = json.loads(path.read_text())
    row = next(iter(rep["ladders"].values()))
    assert row["agreement"]["pairs"] == 3 * len(tiny_bundle.rungs) and row["agreement"]["crc_failures"] == 0
    assert row["start"]["onnx"]["rss_mb"] > 0 and rep["installed"]["onnx"]["mb"] > 0


def test_edge_runtime_benchmark_on_a_variable_rate_bundle(vr_bundle, tiny_weights, tiny_images, tmp_path, capsys):
    """A variable-rate bundle is timed at quality levels (its ends by default), on each edge path (rANS coder and
    integer h_s, compiled or not) with the coder's per-symbol costs; before, it stopped with "give a quality level"."""
    mod = _benchmark("edge_runtime")
    path = tmp_path / "edge.json"
    assert mod.main(["--bundles", str(vr_bundle.root), "--weights", str(tiny_weights), "--images", str(tiny_images),
                     "--max-images", "2", "--repeats", "2", "--warmup", "1", "--starts", "1", "--threads", "1",
                     "--no-agreement", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    lo, hi = vr_bundle.config.levels
    assert f"level {lo}," in out and f"level {hi}," in out and "ns per symbol" in out
    row = next(iter(json.loads(path.read_text())["ladders"].values()))
    assert set(row["frame_ms"]) == {str(lo), str(hi)}
    ft = row["frame_ms"][str(hi)]
    assert all(ft[f"onnx1 head+codec {p}"] > 0 for p in ("c/c", "c/numpy", "python/numpy"))  # rANS/h_s
    ns = row["coder"][str(hi)]["ns_per_symbol"]
    assert {"encode c", "decode c", "encode python", "encode compressai", "decode compressai"} <= set(ns)
    assert {"integer h_s (c)", "integer h_s (numpy)"} <= set(row["coder"][str(hi)]["stage_ms"])


def _camvid_like(images: Path, tmp_path: Path) -> Path:
    """A CamVid-shaped folder (test/ and val/) of 12 tiny images, the frames of a stream."""
    frames = tmp_path / "camvid"
    (frames / "test").mkdir(parents=True)
    for p in sorted(images.glob("*.png"))[:12]:
        (frames / "test" / p.name).write_bytes(p.read_bytes())
    (frames / "val").mkdir()
    return frames


def test_rate_control_benchmark_on_a_tiny_variable_rate_bundle(vr_bundle, tiny_bundle, tiny_weights, tiny_images,
                                                               tmp_path, capsys):
    """``benchmarks/rate_control.py`` end to end: sizes, per-image hints (decoded), a short stream with its plot,
    the timing ratio (CamVid frames stand in as the tiny images)."""
    mod = _benchmark("rate_control")
    frames = _camvid_like(tiny_images, tmp_path)
    curve = vr_bundle.manifest["variable_rate"]["curve"]
    hints = f"{curve[1]['bpp']:.4f},{curve[-1]['bpp'] * 2:.4f}"
    assert mod.main(["--bundle", str(vr_bundle.root), "--ladder", str(tiny_bundle.root), "--weights", str(tiny_weights),
                     "--data", str(tiny_images), "--hints", hints, "--camvid", str(frames), "--frames", "12",
                     "--window", "6", "--fps", "10", "--link-fps", "10", "--timing-images", "2", "--repeats", "1",
                     "--plot", str(tmp_path / "rc.png"), "--link-plot", str(tmp_path / "link.png")]) == 0
    out = capsys.readouterr().out
    assert f"({len(tiny_bundle.rungs)} rung files" in out and "1. per-image hints" in out
    wanted = [float(h) for h in hints.split(",")]
    rows = [line.split() for line in out.splitlines()
            if line.split() and line.split()[0].replace(".", "", 1).isdigit() and float(line.split()[0]) in wanted]
    assert len(rows) == 2 and all(r[1] == "0" for r in rows)  # no message over its hint
    assert "every 6-frame window" in out and (tmp_path / "rc.png").stat().st_size > 0 and "x (goal <= 1.3x)" in out
    assert "3. a link of" in out and "the hint alone:" in out and (tmp_path / "link.png").stat().st_size > 0


def test_shaped_link_benchmark_on_a_tiny_variable_rate_bundle(vr_bundle, tiny_weights, tiny_images, tmp_path, capsys):
    """``benchmarks/shaped_link.py`` end to end where the machine lets it shape a link (root, ``ip netns``, ``tc``):
    a server in a namespace, both runs through the shaped veth, the report and the plot; the namespace is gone after."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")):
        pytest.skip("needs root with ip and tc (network namespaces, a shaped veth)")
    mod = _benchmark("shaped_link")
    try:  # what the benchmark sets up, tried first: a container may refuse namespaces, veth pairs or tbf
        mod.setup(100.0)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot shape a link here: {' '.join(e.cmd)}: {e.stderr.strip()}")
    finally:
        mod.teardown()
    frames = _camvid_like(tiny_images, tmp_path)
    assert mod.main(["--bundle", str(vr_bundle.root), "--weights", str(tiny_weights), "--camvid", str(frames),
                     "--frames", "12", "--fps", "10", "--window", "4", "--drain", "1",
                     "--plot", str(tmp_path / "link.png")]) == 0
    out = capsys.readouterr().out
    assert "following the link:" in out and "the hint alone:" in out and out.count("12 frames") == 2
    assert (tmp_path / "link.png").stat().st_size > 0
    assert mod.NS not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_train_throughput_times_the_real_step_under_each_variant(capsys):
    """``benchmarks/train_throughput.py`` times ``TrainStep`` (the loop's own step) per variant, side by side with
    the first as the baseline; a tiny backbone keeps it quick."""
    mod = _benchmark("train_throughput")
    rc = mod.main(["--model", "cifar_resnet20", "--splits", "layer1", "--batch-size", "4", "--steps", "1",
                   "--repeats", "1", "--variants", "fp32,bf16+cl"])
    assert rc == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("layer1"))
    cells = row.split()[1:]
    assert len(cells) == 4 and cells[1] == "1.00x" and float(cells[2]) > 0  # baseline, then a measured ratio
    with pytest.raises(SystemExit):
        mod.main(["--variants", "fp32,fp64"])
