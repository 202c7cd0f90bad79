"""Edge package integrity (issue 24, E9): a package is checked as a whole on load, and every tampered package is
refused by ``splitinfer edge`` with one line (``error: ...``, exit 2), never a traceback and never loaded.

The tamper matrix below starts each case from a fresh copy of a real exported package. Where a case tampers with
one thing, the rest is made consistent again (``_relist``: the files' hashes and the package id recomputed), so the
check under test is the one that must refuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from shared.edge_format import META_BUNDLE, META_HEAD, META_RUNG, package_id


@pytest.fixture(scope="module")
def package(tiny_bundle, tiny_weights, tmp_path_factory):
    from shared.edge_export import export_edge

    return export_edge(tiny_bundle, tmp_path_factory.mktemp("edge") / "tiny", weights=str(tiny_weights))


# ------------------------------------------------------------------------------------------------ helpers
def _edge(p: Path) -> dict:
    return json.loads((p / "edge.json").read_text())


def _write(p: Path, m: dict) -> None:
    (p / "edge.json").write_text(json.dumps(m))


def _relist(p: Path, m: dict = None, extra=()) -> dict:
    """Rehash every listed file (and ``extra`` names) and recompute the package id: a consistent forgery."""
    m = m or _edge(p)
    for name in list(m["files"]) + list(extra):
        f = p / name if not os.path.isabs(name) else Path(name)
        if f.exists():
            m["files"][name] = hashlib.sha256(f.read_bytes()).hexdigest()
    m["package_id"] = package_id(m["files"], m["bundle_id"])
    _write(p, m)
    return m


def _graph(nodes, inits=(), inp="image", out="feature", meta=None, opsets=(("", 17),)):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(inp, TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], list(inits))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    helper.set_model_props(model, meta or {})
    return model.SerializeToString()


def _head_meta(p: Path) -> dict:
    m = _edge(p)
    return {META_BUNDLE: m["bundle_id"], META_HEAD: m["head_weights"]}


def _replace(p: Path, name: str, data: bytes) -> None:
    (p / name).write_bytes(data)
    _relist(p)


def _hostile_head(p: Path, data: bytes) -> None:
    _replace(p, "head.onnx", data)


def _loop(p):
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Identity", ["v"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Constant", [], ["n"], value=helper.make_tensor("n", TensorProto.INT64, [], [1 << 40])),
             helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
             helper.make_node("Loop", ["n", "c", "image"], ["feature"], body=body)]
    _hostile_head(p, _graph(nodes, meta=_head_meta(p)))


def _custom_op(p):
    from onnx import helper

    _hostile_head(p, _graph([helper.make_node("Evil", ["image"], ["feature"], domain="com.example")],
                            meta=_head_meta(p), opsets=(("", 17), ("com.example", 1))))


def _external_data(p):
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    e = w.external_data.add()
    e.key, e.value = "location", "../../../../etc/passwd"
    _hostile_head(p, _graph([helper.make_node("Add", ["image", "w"], ["feature"])], [w], meta=_head_meta(p)))


def _runtime_refuses(p):  # passes the guard, but ONNX Runtime cannot type it: Add of float and int64
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.INT64, [1], [1])
    _hostile_head(p, _graph([helper.make_node("Add", ["image", "w"], ["feature"])], [w], meta=_head_meta(p)))


def _wrong_io(p):
    from onnx import helper

    _hostile_head(p, _graph([helper.make_node("Identity", ["x"], ["feature"])], inp="x", meta=_head_meta(p)))


def _rebind_head(p, key, value):
    import onnx

    model = onnx.load(str(p / "head.onnx"))
    for e in model.metadata_props:
        if e.key == key:
            e.value = value
    _hostile_head(p, model.SerializeToString())


def _unlisted(name, replace=False):
    def f(p):
        m = _edge(p)
        if replace:  # a different (valid) graph in its place: the rung encoder as the head
            shutil.copy(p / "rung-00.onnx", p / name)
        del m["files"][name]
        _relist(p, m)
    return f


def _edit(change):
    def f(p):
        m = _edge(p)
        change(m)
        _relist(p, m)
    return f


def _outside(key_path, kind):
    """Point a file reference outside the package (an absolute path or '..'), at a copy with the right hash."""
    def f(p):
        m = _edge(p)
        outside = p.parent / f"outside-{p.name}.onnx"
        shutil.copy(p / "rung-00.onnx", outside)
        name = str(outside) if kind == "absolute" else f"../{outside.name}"
        m["rungs"][0]["onnx"] = name
        m["files"][name] = hashlib.sha256(outside.read_bytes()).hexdigest()
        _relist(p, m)
    return f


def _symlink(p):
    outside = p.parent / f"outside-{p.name}-head.onnx"
    shutil.copy(p / "head.onnx", outside)
    (p / "head.onnx").unlink()
    (p / "head.onnx").symlink_to(outside)


def _swap_rungs(p):
    a, b = (p / "rung-00.onnx").read_bytes(), (p / "rung-01.onnx").read_bytes()
    (p / "rung-00.onnx").write_bytes(b)
    (p / "rung-01.onnx").write_bytes(a)
    _relist(p)


def _flip_byte(name):
    def f(p):
        data = bytearray((p / name).read_bytes())
        data[len(data) // 2] ^= 1
        (p / name).write_bytes(bytes(data))
    return f


def _arrays(change):
    def f(p):
        from safetensors.numpy import load_file, save_file

        a = load_file(str(p / "rung-00.safetensors"))
        change(a)
        save_file(a, str(p / "rung-00.safetensors"))
        _relist(p)
    return f


def _bad_cdf(a):
    a["y.cdf"] = a["y.cdf"].copy()
    a["y.cdf"][0, 1] = a["y.cdf"][0, 0]  # no longer rising strictly: a symbol of frequency 0


def _other_manifest(p):
    m = json.loads((p / "manifest.json").read_text())
    m["rungs"] = m["rungs"][:1]
    (p / "manifest.json").write_text(json.dumps(m))
    _relist(p)


def _set(path, value):
    def change(m):
        *keys, last = path
        for k in keys:
            m = m[k]
        m[last] = value
    return change


TAMPER = {
    # files that edge.json uses but does not hash, and hashes that do not hold
    "head replaced, its files entry deleted": (_unlisted("head.onnx", replace=True), "not listed in its hashed files"),
    "rung graph's files entry deleted": (_unlisted("rung-00.onnx"), "not listed in its hashed files"),
    "rung arrays' files entry deleted": (_unlisted("rung-01.safetensors"), "not listed in its hashed files"),
    "manifest.json's files entry deleted": (_unlisted("manifest.json"), "not listed in its hashed files"),
    "a byte of the arrays changed": (_flip_byte("rung-01.safetensors"), "does not match the hash"),
    "a byte of the head changed": (_flip_byte("head.onnx"), "does not match the hash"),
    "the head deleted": (lambda p: (p / "head.onnx").unlink(), "head.onnx is missing"),
    "package id not the files' hash": (lambda p: _write(p, {**_edge(p), "package_id": "0" * 16}), "not the hash"),
    # paths outside the package
    "absolute path (hash matching)": (_outside(("rungs", 0, "onnx"), "absolute"), "not a plain name"),
    "'..' path (hash matching)": (_outside(("rungs", 0, "onnx"), "dotdot"), "not a plain name"),
    "head is a link to a file outside": (_symlink, "as a plain file"),
    # binding to the bundle id and the head fingerprint
    "head of another bundle": (lambda p: _rebind_head(p, META_BUNDLE, "0123456789abcdef"), "bound to"),
    "head of other weights": (lambda p: _rebind_head(p, META_HEAD, "0123456789abcdef"), "bound to"),
    "rung encoders swapped": (_swap_rungs, "bound to"),
    "edge.json's head fingerprint edited": (_edit(_set(("head_weights",), "0123456789abcdef")), "trained against head"),
    "edge.json's bundle id edited": (_edit(_set(("bundle_id",), "0123456789abcdef")), "made for bundle"),
    "manifest.json of another ladder": (_other_manifest, "manifest.json"),
    # graphs ONNX Runtime must never run
    "head is a Loop of 2**40 steps": (_loop, "operator Loop"),
    "custom operator domain": (_custom_op, "outside the standard ONNX domain"),
    "initializer in an external file": (_external_data, "external file"),
    "head is not ONNX": (lambda p: _hostile_head(p, b"not an onnx model at all"), "ONNX graph refused"),
    "head ONNX Runtime cannot load": (_runtime_refuses, "ONNX Runtime cannot load it"),
    "head with other input names": (_wrong_io, "the runtime feeds ['image']"),
    # malformed values: one line naming the field
    "edge.json not JSON": (lambda p: (p / "edge.json").write_text("{not json"), "is not JSON"),
    "edge.json a list": (lambda p: (p / "edge.json").write_text("[]"), "must be a JSON object"),
    "format 1 (no graph binding)": (_edit(_set(("format",), "splitinfer-edge/1")), "export the package again"),
    "input size negative": (_edit(_set(("preprocess", "input_size"), [-1, 32])), "preprocess.input_size"),
    "std zero": (_edit(_set(("preprocess", "std"), [0, 1, 1])), "preprocess.std"),
    "num_classes a string": (_edit(_set(("num_classes",), "10")), "num_classes"),
    "rungs out of order": (_edit(lambda m: m["rungs"].reverse()), "rungs in order"),
    "h_s layer's up a string": (_edit(lambda m: m["rungs"][0]["h_s"][0].update(up="2")), "h_s[0]"),
    "unknown rate model": (_edit(_set(("rungs", 0, "rate_model"), "magic")), "rate_model"),
    "arrays not safetensors": (lambda p: _replace(p, "rung-00.safetensors", b"\xff" * 64), "not a safetensors file"),
    "arrays without y.cdf": (_arrays(lambda a: a.pop("y.cdf")), "'y.cdf' is missing"),
    "CDF table not rising": (_arrays(_bad_cdf), "malformed arrays"),
}


def test_the_untampered_package_loads(package):
    from edge_client import EdgePackage, OnnxEdgeEncoder

    pkg = EdgePackage(package)
    assert set(pkg.files) == {p.name for p in package.iterdir()} - {"edge.json"}
    enc = OnnxEdgeEncoder(package)
    enc.preload()  # every rung's session made from the checked bytes


@pytest.mark.parametrize("case", list(TAMPER))
def test_a_tampered_package_is_refused_with_one_line(package, tmp_path, case, capsys):
    from splitinfer.cli import main

    tamper, message = TAMPER[case]
    p = tmp_path / "pkg"
    shutil.copytree(package, p, symlinks=True)
    tamper(p)
    img = Path(__file__).resolve().parents[1] / "shared" / "assets" / "samples"
    rc = main(["edge", "--server", "127.0.0.1:9", "--timeout", "1", "--retries", "0", "--bundle", str(p), str(img)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert message in err, err


def test_the_matrix_count_in_the_docs():
    """docs/deploy.md states how many tamper cases the matrix refuses."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    assert f"{len(TAMPER)} tamper cases" in text


def test_the_graph_guard_reads_what_the_exporter_binds(package):
    from edge_client.onnx_guard import inspect_graph

    m = _edge(package)
    head = inspect_graph((package / "head.onnx").read_bytes())
    assert head.metadata[META_BUNDLE] == m["bundle_id"] and head.metadata[META_HEAD] == m["head_weights"]
    assert head.inputs == ["image"] and head.outputs == ["feature"] and head.opsets == {"": 17}
    rung = inspect_graph((package / "rung-02.onnx").read_bytes())
    assert rung.metadata[META_RUNG] == "2" and rung.outputs == ["y", "z"]
    for cut in (1, 7, 100):  # a truncated graph never parses as a whole one
        with pytest.raises(ValueError):
            inspect_graph((package / "rung-02.onnx").read_bytes()[:-cut])
