"""Every hint outcome is visible, and the frictions a new user met end in one clean line (issue 27, step 2): a message
over its hint says so and why (table, ``--json``, ``encode``), a stream that cannot hold ``--kbps`` says so at the
end, and what cannot run (``--track-link`` with a ladder or over REST, the wrong port) is a named error."""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import threading
from types import SimpleNamespace

import pytest

from splitinfer.cli import main

from _cli import SAMPLE
from _cli import run_cli_out as run_cli


def assert_clean(rc, err, *needles):
    assert rc == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error: " in last and all(n in last for n in needles), err


# ------------------------------------------------------------------------------------------ refused clearly
def test_rest_stream_cannot_follow_the_link(capsys):
    """``--rest --stream`` streams one request per frame (tests/test_edge_runtime.py runs it); following the link
    needs frames in flight, which only the gRPC stream has: refused, not dropped."""
    rc, _, err = run_cli(["edge", SAMPLE, "--server", "localhost:8000", "--rest", "--stream", "--kbps", "10", "--fps",
                          "10", "--track-link"], capsys)
    assert_clean(rc, err, "--track-link needs --stream over gRPC")


def test_track_link_with_a_ladder_is_a_clean_error(tiny_bundle, tiny_weights, capsys):
    rc, _, err = run_cli(["edge", SAMPLE, "--server", "127.0.0.1:1", "--bundle", tiny_bundle.root, "--weights",
                          tiny_weights, "--stream", "--kbps", "10", "--fps", "10", "--track-link"], capsys)
    assert_clean(rc, err, "--track-link", "needs a variable-rate bundle", tiny_bundle.bundle_id)


class _Http1(socketserver.TCPServer):
    allow_reuse_address = True


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the REST port of a server that is not gRPC
        self.send_error(404)

    def log_message(self, *args):
        pass


def test_a_connection_error_names_the_likely_cause():
    from edge_client.results import ServiceError
    from edge_client.transports import GrpcTransport, RestTransport

    srv = _Http1(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        target = f"127.0.0.1:{srv.server_address[1]}"
        with pytest.raises(ServiceError) as e:  # gRPC at an HTTP/1 port (the REST port without --rest)
            GrpcTransport(target, None, False, None, 1 << 20).models(10)
        assert "likely the server's REST port; use --rest" in e.value.message
    finally:
        srv.shutdown()
        srv.server_close()
    with socket.socket() as s:  # a port nothing listens at (another than the one above: gRPC keeps its last error)
        s.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{s.getsockname()[1]}"
    for transport in (GrpcTransport(target, None, False, None, 1 << 20),
                      RestTransport(f"http://{target}", None, True)):
        with pytest.raises(ServiceError) as e:  # nothing listens there any more
            transport.models(10)
        assert "nothing listens at" in e.value.message and "is the server running" in e.value.message


# ------------------------------------------------------------------------------------------ other commands
def test_info_takes_bundle_like_every_command(tiny_bundle, capsys):
    rc, out, err = run_cli(["info", "--bundle", tiny_bundle.root], capsys)
    assert rc == 0 and f"bundle {tiny_bundle.bundle_id}" in out and not err
    rc, out, err = run_cli(["info", tiny_bundle.root], capsys)  # the positional form still works, deprecated
    assert rc == 0 and f"bundle {tiny_bundle.bundle_id}" in out and "deprecated" in err and "--bundle" in err
    rc, _, err = run_cli(["info", tiny_bundle.root, "--bundle", "elsewhere"], capsys)
    assert_clean(rc, err, "two bundles given")


def test_train_help_shows_only_defaults_that_say_something(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in out and "(default: True)" not in out and "(default: False)" not in out
    assert "--no-resume ignore an existing checkpoint" in out and "(default: " in out  # real defaults still shown


def test_eval_says_how_many_images_it_scores():
    from shared.reporting import ladder_table

    bundle = SimpleNamespace(bundle_id="ab" * 8, model="m", split="s")
    res = {"reference": {"n_images": 21, "n_labelled": 19, "top1": 0.5}, "rungs": []}
    head = ladder_table(bundle, res, ["top1"], "held-out part of x")[0]
    assert "on 21 images, 19 of them labelled (the accuracy figures score those)" in head
    res["reference"]["n_labelled"] = 21
    assert "on 21 images (held-out" in ladder_table(bundle, res, ["top1"], "held-out part of x")[0]


# ------------------------------------------------------------------------------------------ outcomes shown
def test_encode_says_when_a_message_is_over_its_hint(tiny_bundle, vr_bundle, tiny_weights, tmp_path, capsys):
    for bundle, why in ((tiny_bundle, "below the coarsest rung"), (vr_bundle, "below the coarsest level")):
        rc, out, err = run_cli(["encode", SAMPLE, "-o", tmp_path / "x.si", "--bundle", bundle.root, "--weights",
                                tiny_weights, "--bitrate", "0.0001"], capsys)
        assert rc == 0 and "Traceback" not in err
        assert f"over the hint of 0.0001 bpp: {why}" in out, out
    rc, out, _ = run_cli(["encode", SAMPLE, "-o", tmp_path / "x.si", "--bundle", tiny_bundle.root, "--weights",
                          tiny_weights, "--bitrate", "100"], capsys)
    assert rc == 0 and "over the hint" not in out


def test_edge_shows_each_hint_outcome_and_a_stream_that_cannot_hold_its_rate(tiny_bundle, tiny_weights,
                                                                            heldout_items, capsys):
    from _service import running_server

    images = [str(p) for p, _ in heldout_items[:4]]
    kbps = 0.001 * 32 * 32 * 10 / 1000  # 0.001 bpp per frame at 10 fps: below every rung
    with running_server(tiny_bundle, tiny_weights) as server:
        def edge(rate, frames, *more):
            return run_cli(["edge", "--server", f"127.0.0.1:{server.grpc_port}", "--bundle", tiny_bundle.root,
                            "--weights", tiny_weights, "--stream", "--kbps", f"{rate:g}", "--fps", "10", *more,
                            *frames], capsys)

        rc, out, err = edge(kbps, images, "--json")
        rows = [json.loads(line) for line in out.splitlines()]
        assert rc == 0 and len(rows) == len(images)
        assert all(r["ok"] and r["hint_met"] is False and r["hint_reason"].startswith("below the coarsest rung")
                   for r in rows), rows
        assert f"{len(images)} of {len(images)} messages over their hint" in err and "did not hold --kbps" in err
        rc, out, _ = edge(kbps, images)
        assert rc == 0 and " hint " in out.splitlines()[1] and out.count(" OVER ") == len(images)
        assert f"did not hold --kbps {kbps:g}" in out and "less than the coarsest rung" in out
        rc, out, err = edge(1000, images[:1])  # plenty: nothing to say
        assert rc == 0 and "did not hold" not in out + err and "over their hint" not in out + err
