"""The options dataclasses behind ``splitinfer edge``, ``serve``, ``encode``, ``decode``, ``export-edge`` and
``report``: the flags :func:`shared.options.add_options` makes from them, and what they stand for."""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import List, Optional

import numpy as np
import pytest
from PIL import Image

from shared.options import add_options, option, options


@dataclasses.dataclass
class _Demo:
    files: List[str] = option(help="inputs", positional=True, nargs="+", metavar="FILE")
    output: str = option(help="where", short="-o")
    fast: Optional[float] = option(None, "fast", exclusive="speed")
    slow: Optional[int] = option(None, "slow", exclusive="speed")
    enable_x: Optional[bool] = option(None, "no x", flag="no-x", action="store_false")


def _parser(cls) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_options(p, cls)
    return p


def test_add_options_positional_short_exclusive_and_renamed_switch():
    p = _parser(_Demo)
    a = p.parse_args(["a", "b", "-o", "out", "--fast", "2"])
    assert options(_Demo, a) == _Demo(files=["a", "b"], output="out", fast=2.0, slow=None, enable_x=None)
    assert p.parse_args(["a", "--output", "o", "--no-x", "--slow", "3"]).enable_x is False
    with pytest.raises(SystemExit):  # one of a group only
        p.parse_args(["a", "-o", "o", "--fast", "1", "--slow", "2"])


def test_serve_options_are_settings_with_the_defaults_their_help_states():
    from cloud_server.options import ServeOptions
    from cloud_server.settings import Settings, serve_settings

    fields, checked = Settings.model_fields, []
    for f in dataclasses.fields(ServeOptions):
        if f.name in ("bundle", "config"):
            continue
        assert f.name in fields, f"--{f.name.replace('_', '-')} is no setting"
        assert f.default is None  # not given: environment, config file or the setting's default
        said = re.search(r"\(default:? ([^;)]+)", f.metadata["help"])
        want = fields[f.name].default
        if said and want is not None:  # None: the pretrained weights, say
            assert said.group(1).split()[0] == (f"{want:g}" if isinstance(want, float) else str(want)), f.name
            checked.append(f.name)
    assert len(checked) >= 6, checked
    s = serve_settings(ServeOptions(bundle=["m=/x", "/y"], http_port=0, enable_grpc=False))
    assert [(b.name, str(b.path)) for b in s.bundles] == [("m", "/x"), (None, "/y")]
    assert s.http_port == 0 and not s.enable_grpc and s.enable_rest and s.grpc_port == 50051


def test_serve_settings_refusal_is_a_user_error():
    from cloud_server.options import ServeOptions
    from cloud_server.settings import serve_settings
    from shared.errors import UserError

    with pytest.raises(UserError, match="http_port"):
        serve_settings(ServeOptions(http_port=70000))


def test_the_edge_command_line_makes_its_options():
    from edge_client.options import EdgeOptions
    from shared.errors import UserError
    from splitinfer.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["edge", "--server", "h:1", "--kbps", "500", "--fps", "10", "--api-key", "k", "x.jpg"])
    opts = options(EdgeOptions, args)
    assert opts.images == ["x.jpg"] and opts.server == "h:1" and opts.api_key == "k" and opts.timeout == 10.0
    assert opts.runtime == "onnx" and opts.topk == 1 and not opts.write_masks
    assert str(opts.hint()) == "500 kbit/s at 10 fps"
    with pytest.raises(UserError, match="go together"):
        EdgeOptions(images=["x"], server="h:1", kbps=5.0).hint()
    for argv in (["--bitrate", "0.1", "--rung", "1"], ["--timeout", "0"], []):
        with pytest.raises(SystemExit):
            parser.parse_args(["edge", *argv, "x.jpg"] + ([] if not argv else ["--server", "h:1"]))


def test_find_images_skips_written_masks(tmp_path):
    from edge_client.options import find_images
    from shared.errors import UserError

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("L", (4, 4)).save(tmp_path / "a.mask.png")  # written by an earlier --masks run
    missing = tmp_path / "missing.jpg"  # stays: it fails on its own line
    assert find_images([str(tmp_path), str(missing)]) == [tmp_path / "a.png", missing]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        find_images([str(tmp_path / "empty")])


def test_write_mask_draws_in_the_colours_of_the_label_set(tmp_path):
    """An edge package names its label set: the mask's palette is that set's, whatever the class count says."""
    import io

    from shared.labels import colours_of
    from shared.reporting import write_mask

    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 1], [2, 3]], dtype=np.uint8)).save(buf, format="PNG")
    result = type("R", (), {"source": str(tmp_path / "img.jpg"), "mask_png": buf.getvalue()})()
    out = write_mask(result, None, 11, "camvid")
    assert out == tmp_path / "img.mask.png"
    pal = Image.open(out).getpalette()[:6]
    assert [tuple(pal[:3]), tuple(pal[3:6])] == colours_of("camvid", 11)[:2]
    old = write_mask(result, tmp_path / "m", 11)  # an older package: no label set, the class count picks
    assert tuple(Image.open(old).getpalette()[:3]) == colours_of(None, 11)[0]


def test_an_edge_install_parses_its_commands_without_cloud_server_or_pydantic():
    """The edge image ships shared/, edge_client/ and splitinfer/ only: a command builds its own flags, never the
    others'."""
    import subprocess
    import sys

    code = ("import sys\nfor m in ('torch', 'compressai', 'cloud_server', 'pydantic'):\n    sys.modules[m] = None\n"
            "from splitinfer.cli import main\nfor a in (['--help'], ['edge', '--help'], ['export-edge', '--help']):\n"
            "    try:\n        main(a)\n    except SystemExit as e:\n        assert e.code == 0, a\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
