"""The edge fetches its package from the cloud (issue 25, item 1): archives, checks against the server's metadata,
the cache, both transports behind API keys, and a torch-free process with an empty cache answered by a live server.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "shared" / "assets" / "samples"
BLOCK = "import sys\nfor m in ('torch', 'torchvision', 'compressai'):\n    sys.modules[m] = None  # import -> ImportError\n"
KEY = "fetch-test-key"


@pytest.fixture(scope="module")
def package(tiny_bundle, tiny_weights, tmp_path_factory):
    from edge_client import EdgePackage
    from shared.edge_export import export_edge

    return EdgePackage(export_edge(tiny_bundle, tmp_path_factory.mktemp("edge") / "tiny", weights=str(tiny_weights)))


def _model(pkg, **change):
    return {"name": "m", "bundle_id": pkg.bundle_id, "head_weights": pkg.head_weights, **change}


# ------------------------------------------------------------------------------------------------ archives
def test_an_archive_unpacks_to_the_same_package_and_is_cached(package, tmp_path):
    from edge_client.fetch import pack_package, package_for

    a = pack_package(package)
    assert pack_package(package).data == a.data  # fixed order and metadata: the same bytes every time
    calls = []
    got = package_for(_model(package), lambda name: calls.append(name) or a, cache=tmp_path)
    assert got.package_id == package.package_id and got.root == tmp_path / "edge" / package.bundle_id
    assert calls == ["m"]
    again = package_for(_model(package), lambda name: pytest.fail("downloaded twice"), cache=tmp_path)
    assert again.package_id == package.package_id


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name, data=b"x", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("members, why", [
    ([_member("../evil")], "not a plain file name"),
    ([_member("/etc/evil")], "not a plain file name"),
    ([_member("sub/evil")], "not a plain file name"),
    ([_member("a"), _member("a")], "comes twice"),
    ([_member("link", kind=tarfile.SYMTYPE, link="/etc/passwd")], "not a regular file"),
    ([_member("hard", kind=tarfile.LNKTYPE, link="edge.json")], "not a regular file"),
    ([_member("dev", kind=tarfile.CHRTYPE)], "not a regular file"),
])
def test_a_hostile_archive_is_refused_before_anything_is_written_outside(tmp_path, members, why):
    from edge_client.fetch import unpack_archive
    from shared.bundle import BundleError

    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BundleError, match=why):
        unpack_archive(_tar(members), dest)
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


def test_not_a_tar_is_one_clear_error(tmp_path):
    from edge_client.fetch import unpack_archive
    from shared.bundle import BundleError

    with pytest.raises(BundleError, match="not a valid tar"):
        unpack_archive(b"\x00garbage" * 100, tmp_path)


@pytest.mark.parametrize("change, why", [
    ({"bundle_id": "0123456789abcdef"}, "serves bundle 0123456789abcdef"),
    ({"head_weights": "0123456789abcdef"}, "holds head 0123456789abcdef"),
])
def test_a_package_that_does_not_match_the_servers_metadata_is_refused(package, tmp_path, change, why):
    from edge_client.fetch import pack_package, package_for
    from shared.bundle import BundleError

    with pytest.raises(BundleError, match=why):
        package_for(_model(package, **change), lambda name: pack_package(package), cache=tmp_path)
    assert not any((tmp_path / "edge").glob("*/edge.json"))  # nothing cached


def test_a_damaged_or_tampered_download_is_refused(package, tmp_path):
    from edge_client.fetch import Archive, pack_package, package_for
    from shared.bundle import BundleError

    a = pack_package(package)
    cut = Archive(a.data[:-4096], a.package_id, "", "", a.sha256)
    with pytest.raises(BundleError, match="arrived damaged"):
        package_for(_model(package), lambda name: cut, cache=tmp_path)
    # a consistent archive whose head was replaced (and hash and package id rewritten): the package checks refuse it
    members = {}
    with tarfile.open(fileobj=io.BytesIO(a.data)) as tar:
        for m in tar:
            members[m.name] = tar.extractfile(m).read()
    members["head.onnx"] = members["rung-00.onnx"]
    forged = _tar([(_member(n, d)) for n, d in members.items()])
    with pytest.raises(BundleError, match="refused"):
        package_for(_model(package), lambda name: Archive(forged, "", "", "", None), cache=tmp_path)


# ------------------------------------------------------------------------------------------------ live server
@pytest.fixture(scope="module")
def server(tiny_bundle, tiny_weights, tmp_path_factory):
    from _service import running_server

    with running_server(tiny_bundle, tiny_weights, api_keys=[KEY]) as s:
        yield s


def test_both_transports_serve_the_package_behind_the_api_keys(server, package, tmp_path):
    import grpc
    import httpx

    from _service import MODEL
    from edge_client.fetch import package_for
    from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

    url = f"http://127.0.0.1:{server.http_port}/v2/models/{MODEL}/edge-package"
    assert httpx.get(url).status_code == 401
    r = httpx.get(url, headers={"authorization": f"Bearer {KEY}"}, timeout=300)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert r.headers["x-splitinfer-bundle-id"] == package.bundle_id
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.EdgePackage(pb.EdgePackageRequest(model=MODEL), timeout=60))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        chunks = list(stub.EdgePackage(pb.EdgePackageRequest(model=MODEL), timeout=300,
                                       metadata=[("authorization", f"Bearer {KEY}")]))
        assert b"".join(c.data for c in chunks) == r.content and chunks[0].total_bytes == len(r.content)
        info = stub.ModelMetadata(pb.ModelMetadataRequest(), metadata=[("authorization", f"Bearer {KEY}")]).models[0]
        with pytest.raises(grpc.RpcError) as e:
            list(stub.EdgePackage(pb.EdgePackageRequest(model="nope"), timeout=60,
                                  metadata=[("authorization", f"Bearer {KEY}")]))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.bundle_id == package.bundle_id and info.head_weights == package.head_weights
    model = {"name": MODEL, "bundle_id": info.bundle_id, "head_weights": info.head_weights}
    from edge_client.fetch import Archive

    pkg = package_for(model, lambda name: Archive(r.content, r.headers["x-splitinfer-package-id"], "", "",
                                                  r.headers["x-splitinfer-sha256"]), cache=tmp_path)
    assert pkg.bundle_id == package.bundle_id


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_a_torch_free_edge_with_an_empty_cache_gets_answers_from_a_live_server(server, tmp_path, transport):
    """A fresh interpreter where torch, torchvision and compressai cannot be imported, an empty cache, no --bundle:
    ``splitinfer edge --server H:P`` fetches the package, checks it, caches it and gets every sample answered."""
    port = server.grpc_port if transport == "grpc" else server.http_port
    cache = tmp_path / "cache"
    argv = ["edge", "--server", f"127.0.0.1:{port}", "--json", "--timeout", "60", str(SAMPLES)]
    argv += ["--rest"] if transport == "rest" else []
    code = BLOCK + f"""
import json
from splitinfer.cli import main
rc = main({argv!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "compressai") and sys.modules[m])
print(json.dumps({{"rc": rc, "loaded": loaded}}))
"""
    env = {**os.environ, "SPLITINFER_CACHE": str(cache), "SPLITINFER_API_KEY": KEY, "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    rows, res = [json.loads(x) for x in lines[:-1]], json.loads(lines[-1])
    assert res == {"rc": 0, "loaded": []}, out.stderr[-2000:]
    assert len(rows) == len([p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")])
    assert all(r["ok"] for r in rows)
    cached = list((cache / "edge").glob("*/edge.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["bundle_id"] == cached[0].parent.name
