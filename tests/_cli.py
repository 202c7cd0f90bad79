"""Running ``splitinfer`` in-process in tests: one helper for every CLI test module."""

from __future__ import annotations

from pathlib import Path

from splitinfer.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = sorted((ROOT / "shared" / "assets" / "samples").glob("*.JPEG"))[0]


def run_cli_out(argv, capsys):
    """(exit code, stdout, stderr) of ``splitinfer ARGV`` in-process; an uncaught exception fails the test."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err
