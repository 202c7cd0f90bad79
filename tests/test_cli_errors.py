"""Every common mistake a new user makes ends in one clean line and exit code 2, never a traceback (issue 15).

Argument mistakes (a bad flag, a bitrate of 0, -1 or nan, a server without a port) are argparse's usage errors of
the sub-command; what the library refuses (a text file or a folder given as an image or a bitstream, an empty
data folder, an unknown model or split, a malformed bundle manifest) is ``error: ...`` from ``shared.errors.UserError``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from splitinfer.cli import COMMANDS, OPTIONS, build_parser, main

from _cli import ROOT, SAMPLE, run_cli_out


def run_cli(argv, capsys):
    """(exit code, stderr) of ``splitinfer ARGV`` run in-process; an uncaught exception fails the test."""
    rc, _, err = run_cli_out(argv, capsys)
    return rc, err


def assert_clean(rc, err, *needles, command=None):
    assert rc == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") or last.startswith(f"splitinfer {command}: error: "), err
    for n in needles:
        assert n in last, err


@pytest.fixture
def mistakes(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "folder").mkdir()
    shutil.copy(SAMPLE, tmp_path / "folder" / SAMPLE.name)
    (tmp_path / "empty").mkdir()
    return tmp_path


def test_a_text_file_or_a_folder_is_no_image_and_no_bitstream(mistakes, capsys):
    out = mistakes / "x.si"
    assert_clean(*run_cli(["encode", mistakes / "notes.txt", "-o", out], capsys), "notes.txt", "not a readable image")
    assert_clean(*run_cli(["encode", mistakes / "folder", "-o", out], capsys), "is a folder, not an image")
    assert_clean(*run_cli(["encode", mistakes / "nope.jpg", "-o", out], capsys), "nope.jpg", "no such file")
    assert_clean(*run_cli(["decode", mistakes / "folder"], capsys), "is a folder, not a bitstream")
    assert_clean(*run_cli(["decode", mistakes / "notes.txt"], capsys), "not a splitinfer bitstream")
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "fast"])
def test_a_bitrate_must_be_a_positive_number(value, mistakes, capsys):
    for cmd, argv in (("encode", ["encode", SAMPLE, "-o", mistakes / "x.si"]),
                      ("edge", ["edge", SAMPLE, "--server", "localhost:50051"])):
        assert_clean(*run_cli([*argv, f"--bitrate={value}"], capsys), "argument --bitrate", "positive", command=cmd)


def test_an_empty_data_folder(mistakes, capsys):
    assert_clean(*run_cli(["train", "--data", mistakes / "empty", "--out", mistakes / "b"], capsys), "no images found")
    assert not (mistakes / "b").exists()  # nothing written before the data is known good
    assert_clean(*run_cli(["eval", "--data", mistakes / "empty"], capsys), "no images found")
    assert_clean(*run_cli(["train", "--data", mistakes / "gone", "--out", mistakes / "b"], capsys), "gone")


def test_an_unknown_model_or_split(mistakes, capsys):
    base = ["train", "--data", mistakes / "folder", "--out", mistakes / "b"]
    assert_clean(*run_cli([*base, "--model", "nosuch"], capsys), "unknown model 'nosuch'", "efficientnet_lite0")
    assert_clean(*run_cli([*base, "--split", "nosuch"], capsys), "unknown split point 'nosuch'", "block1")
    assert not (mistakes / "b").exists()


def test_a_wrong_flag_shows_the_sub_commands_usage(capsys):
    rc, err = run_cli(["encode", SAMPLE, "-o", "x.si", "--bogus"], capsys)
    assert_clean(rc, err, "unrecognized arguments: --bogus", command="encode")
    assert "usage: splitinfer encode" in err


@pytest.mark.parametrize("server", ["localhost", "localhost:", "::1"])
def test_a_server_without_a_port(server, capsys):
    rc, err = run_cli(["edge", SAMPLE, "--server", server], capsys)
    assert_clean(rc, err, "argument --server", "no port", command="edge")


def test_a_malformed_manifest_names_its_field(tiny_bundle, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle.root, bad)
    m = json.loads((bad / "manifest.json").read_text())
    for field, value in (("feature_stride", "sixteen"), ("preprocess", {"input_size": [224]}),
                         ("rungs", [{**m["rungs"][0], "lam": "big"}])):
        (bad / "manifest.json").write_text(json.dumps({**m, field: value}))
        rc, err = run_cli(["info", bad], capsys)
        assert_clean(rc, err, "manifest.json: field", field)
        assert len(err.strip().splitlines()) == 1
    (bad / "manifest.json").write_text("{not json")
    assert_clean(*run_cli(["info", bad], capsys), "not JSON")


def test_every_option_has_help():
    parser = build_parser()
    assert set(parser.commands) == set(COMMANDS)
    assert set(OPTIONS) == set(COMMANDS), "a command whose flags come from no options dataclass"
    for name, p in parser.commands.items():
        for action in p._actions:
            assert action.help, f"`splitinfer {name}` {'/'.join(action.option_strings) or action.dest} has no help"


def test_no_traceback_from_the_installed_command(tmp_path):
    """The same, through a fresh interpreter (what a user runs): one line on stderr, exit 2."""
    (tmp_path / "notes.txt").write_text("hello\n")
    proc = subprocess.run([sys.executable, "-m", "splitinfer", "encode", str(tmp_path / "notes.txt"), "-o",
                           str(tmp_path / "x.si")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`splitinfer info | head -1`: the pipe closes before the table is written."""
    proc = subprocess.Popen([sys.executable, "-m", "splitinfer", "info"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # no reader: the first write fails with EPIPE
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err


def test_edge_with_a_text_file_reports_it_on_its_own_line(tiny_bundle, tiny_weights, mistakes, capsys):
    """``edge`` goes on past a bad image (its own ``failed`` line, exit 1) and never raises."""
    from _service import running_server  # tests/ is on sys.path already: pytest puts conftest.py's folder there

    with running_server(tiny_bundle, tiny_weights) as server:
        argv = ["edge", mistakes / "notes.txt", "--server", f"127.0.0.1:{server.grpc_port}", "--bundle",
                tiny_bundle.root, "--weights", tiny_weights]
        rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert rc == 1 and "Traceback" not in cap.err
    assert "notes.txt" in cap.out and "failed: BAD_IMAGE" in cap.out and "1 of 1 images failed" in cap.err


def test_the_manifest_passes_variable_rate_and_unknown_fields_through(tiny_bundle, tmp_path):
    """A variable-rate section and fields this version does not know load untouched; the embedded ladders load
    and their typed fields agree with the raw manifest."""
    from shared.bundle import embedded_bundle_paths, load_bundle

    b = tmp_path / "vr"
    shutil.copytree(tiny_bundle.root, b)
    m = json.loads((b / "manifest.json").read_text())
    vr = {"levels": [0.5, 2.0], "curve": [[0.5, 0.1], [2.0, 0.4]]}
    (b / "manifest.json").write_text(json.dumps({**m, "variable_rate": vr, "future_field": {"x": 1}}))
    got = load_bundle(b)
    assert got.variable_rate == vr and got.meta.extra == {"future_field": {"x": 1}}
    assert got.feature_stride == tiny_bundle.feature_stride and got.served_name == "cifar_resnet20-layer1"
    for path in embedded_bundle_paths():
        e = load_bundle(path)
        assert e.input_size == tuple(e.manifest["preprocess"]["input_size"]) == (224, 224)
        assert e.feature_stride == e.manifest["feature_stride"]
        assert (e.variable_rate is None) == (e.config.levels is None)  # only the variable-rate network has one
