"""``benchmarks/service_load.py`` runs end to end on the tiny bundle (short runs: the figures are not checked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "service_load.py"


def test_service_benchmark_smoke(tiny_bundle, tiny_weights, tiny_images, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("service_load", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.json"
    rc = mod.main(["--bundle", str(tiny_bundle.root), "--weights", str(tiny_weights), "--images", str(tiny_images),
                   "--max-images", "3", "--clients", "2", "--duration", "0.3", "--requests", "10",
                   "--switch-clients", "2", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "overhead:" in text and "batching throughput gain" in text and "rung switching" in text
    res = json.loads(out.read_text())
    assert res["overhead"]["in_process_p50_ms"] > 0 and res["overhead"]["grpc_p50_ms"] > 0
    assert [(r["batching"], r["clients"]) for r in res["load"]] == [(False, 2), (True, 2)]
    assert all(r["ok"] > 0 and not r["errors"] for r in res["load"])
    assert len(res["switching"]["fixed"]) == len(tiny_bundle.rungs) and res["switching"]["ratio"] > 0
