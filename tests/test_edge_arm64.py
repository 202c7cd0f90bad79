"""The linux/arm64 edge image's build path (docker/Dockerfile.edge with EDGE_EXPORT=export-prebuilt,
scripts/build_edge_arm64.sh) and the comparison scripts/check_arm64_edge.sh relies on, checked without building
anything: building and running the image needs root, buildah and qemu-user-static (`make images-arm64`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_deploy_files import _instructions, _stages

ROOT = Path(__file__).resolve().parents[1]
EDGE = ROOT / "docker" / "Dockerfile.edge"


def test_the_edge_dockerfile_takes_packages_exported_beforehand():
    ins, stages = _instructions(EDGE), _stages(EDGE)
    first_from = [k for k, _ in ins].index("FROM")
    args = dict(a.split("=", 1) for k, a in ins[:first_from] if k == "ARG" and "=" in a)
    assert args["EDGE_EXPORT"] == "export", "by default the packages come from the cloud image, as before"
    # the alternative only copies (nothing runs on the build platform's behalf), from prebuilt/ in the context
    pre = stages["export-prebuilt"]
    assert not [a for k, a in pre if k == "RUN"]
    copies = [a.split() for k, a in pre if k == "COPY"]
    assert {c[-1] for c in copies} == {"/build/app/", "/edge/", "/wheels/"}
    assert all(c[0].startswith("prebuilt/") for c in copies)
    # one stage picks either; the image reads the app, the packages and the wheels only from it
    assert stages["export-packages"][0][1].split() == ["${EDGE_EXPORT}", "AS", "export-packages"]
    final = stages["final"]
    froms = [w for k, a in final if k == "COPY" for w in a.split() if w.startswith("--from=")]
    assert froms and set(froms) == {"--from=export-packages"}
    install = next(a for k, a in final if k == "RUN" and "pip-install.sh" in a)
    assert "--mount=type=bind,from=export-packages,source=/wheels,target=/wheels" in install
    assert "PIP_WHEELS=/wheels" in install
    # the cloud export leaves /wheels empty, so that pip installs from the index there
    assert "mkdir -p /wheels" in " ".join(a for k, a in stages["export"] if k == "RUN")


def _pip_install(tmp_path, wheels=None, *options):
    """Run docker/pip-install.sh with a stand-in pip that records its arguments; returns them, one call a line."""
    log = tmp_path / "calls"
    pip = tmp_path / "pip"
    pip.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    pip.chmod(0o755)
    req = tmp_path / "req.txt"
    req.write_text("numpy==1.26.4\n")
    env = {k: v for k, v in os.environ.items() if k not in {"PIP_WHEELS", "TORCH_INDEX_URL"}}
    env["PIP"] = str(pip)
    if wheels is not None:
        env["PIP_WHEELS"] = str(wheels)
    subprocess.run(["sh", str(ROOT / "docker" / "pip-install.sh"), str(req), *options], check=True, env=env,
                   timeout=30)
    return log.read_text().splitlines()


def test_pip_installs_offline_from_a_folder_of_wheels_and_from_the_index_otherwise(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # an empty folder (the cloud export's /wheels): the index, as before
    for folder in (None, wheels):
        calls = _pip_install(tmp_path, folder)
        assert len([c for c in calls if c.startswith("install")]) == 2
        assert not any("--no-index" in c for c in calls)
        (tmp_path / "calls").unlink()
    (wheels / "numpy-1.26.4-cp311-cp311-manylinux2014_aarch64.whl").write_bytes(b"")
    calls = _pip_install(tmp_path, wheels, "--no-compile")
    installs = [c for c in calls if c.startswith("install")]
    assert len(installs) == 2 and all(f"--no-compile --no-index --find-links {wheels}" in c for c in installs), calls
    assert installs[-1].endswith(f"-r {tmp_path / 'req.txt'}") and calls[-1] == "check"


def _row(image="a.JPEG", kind="rung", value=0, sha="00" * 32, top1=7, machine="x86_64", coder="c", n=100):
    return {"package": "p", "image": image, "kind": kind, "value": value, "bytes": n, "sha256": sha, "rung": 0,
            "level": None, "ok": True, "top1": top1, "machine": machine, "coder": coder}


def _compare(tmp_path, a, b, *extra):
    pa, pb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    pa.write_text("".join(json.dumps(r) + "\n" for r in a))
    pb.write_text("".join(json.dumps(r) + "\n" for r in b))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_arm64_edge.py"), "compare", str(pa), str(pb),
                        *extra], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout


def test_compare_passes_only_identical_messages_with_the_same_answers(tmp_path):
    x86 = [_row(), _row(kind="level", value=4, sha="11" * 32), _row(image="b.JPEG", top1=3)]
    arm = [dict(r, machine="aarch64") for r in x86]
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,class_index\na.JPEG,7\nb.JPEG,4\n")
    rc, out = _compare(tmp_path, x86, arm, "--labels", str(labels))
    assert rc == 0 and "3 messages byte-identical" in out and "top-1 correct 2/3" in out, out
    assert "aarch64" in out and "x86_64" in out
    for bad in ([dict(arm[0], sha256="22" * 32)] + arm[1:],  # one message differs
                [dict(arm[0], bytes=101)] + arm[1:],  # in length
                arm[:2],  # one missing
                [dict(arm[0], top1=8)] + arm[1:],  # another answer
                [dict(arm[0], ok=False, top1=None)] + arm[1:]):  # no answer
        rc, out = _compare(tmp_path, x86, bad)
        assert rc == 1 and "FAILED" in out, out


def test_compare_sorts_each_message_identical_differing_or_wrong(tmp_path):
    x86 = [_row(), _row(kind="level", value=12, sha="11" * 32), _row(image="b.JPEG", top1=3)]
    arm = [dict(r, machine="aarch64") for r in x86]
    differs = [arm[0], dict(arm[1], sha256="33" * 32), arm[2]]  # another message, answered alike
    rc, out = _compare(tmp_path, x86, differs)
    assert rc == 1 and "1 of 3 messages not byte-identical" in out, out
    assert "2/3 messages byte-identical, 1 differ but are answered alike, 0 wrong" in out
    assert "DIFFERS" in out and "(same answer)" in out
    rc, out = _compare(tmp_path, x86, differs, "--answers-only")
    assert rc == 0 and "OK: 2 messages byte-identical, 1 differ but are answered alike" in out, out
    # another answer is wrong, --answers-only or not
    rc, out = _compare(tmp_path, x86, [arm[0], dict(arm[1], sha256="33" * 32, top1=9), arm[2]], "--answers-only")
    assert rc == 1 and "1 wrong" in out and "FAILED" in out, out


@pytest.mark.parametrize("script", ["scripts/build_edge_arm64.sh", "scripts/check_arm64_edge.sh", "docker/build.sh",
                                    "scripts/build_cloud_cpu.sh"])
def test_the_image_scripts_parse(script):
    if not shutil.which("bash"):
        pytest.skip("no bash")
    path = ROOT / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)


def test_make_images_arm64_runs_the_build_script():
    text = (ROOT / "Makefile").read_text()
    assert "images-arm64:" in text and "\tscripts/build_edge_arm64.sh" in text
    assert "images-arm64" in next(ln for ln in text.splitlines() if ln.startswith(".PHONY"))
