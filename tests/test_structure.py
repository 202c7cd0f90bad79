"""The code's structure: what a task is decided by, and which module may import which.

- The task (classification or segmentation) is decided in one place, :mod:`shared.tasks`: outside it no code
  compares a task name, asks a tensor for its rank, or looks at a model name's prefix to tell the tasks apart.
- The packages ``shared``, ``cloud_server``, ``edge_client`` and ``splitinfer`` import each other without cycles,
  counting the imports inside functions too (a cycle there still ties the two modules together, and breaks as soon
  as one of the imports moves to the top).
- The imports run downward only: the library (``shared``) imports neither the edge client, nor the cloud server,
  nor the application (``splitinfer``: the command and the demo); those two import no application, and the edge
  client no cloud server (an edge install has none). Lazily or not: an import inside a function is an arrow too.
- Whether a bundle is a ladder or one variable-rate network is the rate scheme's business (:mod:`shared.rate`):
  outside it (and the codec, whose network has the levels) no code asks for ``levels is None``, and the codec
  imports nothing of rate control (it sits below it).
- The cloud's front ends live in rooms by transport, ``cloud_server/grpc/`` and ``cloud_server/rest/``: neither
  imports the other, and only the composition root (``cloud_server.server``) imports either. One module ends a
  gRPC call with an error (``grpc/status.py``; every servicer method wears its decorator), one reads an API key
  (``auth.py``), one words a pydantic validation error (``errors.describe_validation``).
- The edge reaches the cloud through one room, :mod:`edge_client.transports`: no other module of ``edge_client``
  imports grpc, httpx or the generated stubs, reads a transport's ``stub`` or ``channel``, or passes gRPC call
  ``metadata=`` (the client and the stream speak the ``Transport`` protocol).
- The task owns its outputs on the wire: no output's name appears outside ``shared/tasks`` (nor in the proto, whose
  answer carries a map of named tensors); the rest of the code reads answers through typed accessors.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "cloud_server", "edge_client", "splitinfer")
TASK_PACKAGE = ROOT / "shared" / "tasks"

# what a task check looks like: a task name compared, a tensor's rank used to tell dense outputs from class scores,
# a backbone family told apart by the prefix or suffix of its name
TASK_CHECKS = [
    ("task name compared", re.compile(r"""\btask\s*[!=]=|[!=]=\s*\S*\btask\b|[!=]=\s*["'](classification|segmentation)["']|["'](classification|segmentation)["']\s*[!=]=""")),
    ("task name in a membership test", re.compile(r"""\btask\s+(not\s+)?in\s*[(\[{]""")),
    ("tensor rank as a task check", re.compile(r"""\.dim\(\)\s*[!=<>]=?\s*[34]\b|\.ndim\s*[!=<>]=?\s*[34]\b|len\(\s*\w+\.shape\s*\)\s*[!=]=\s*[34]\b""")),
    ("model name prefix as a task check", re.compile(
        r"""\.(startswith|endswith)\(\s*\(?\s*["'](cifar|deeplab|efficientnet|resnet|_seg|seg_|mobilenet|vit)""")),
]


# what a "does this bundle have levels?" check looks like (ask bundle.scheme instead: shared/rate/scheme.py)
LEVEL_CHECKS = [
    ("levels compared with None", re.compile(r"\blevels\s+is\s+(not\s+)?None\b")),
    ("a bundle's config asked for its levels", re.compile(r"\bconfig\.levels\b")),
    ("levels tested for truth", re.compile(
        r"\b(if|elif|and|or|not)\s+[\w.]*\blevels\s*(:|\band\b|\bor\b|\belse\b|\))|\blevels\s+else\b")),
]
# the scheme (and the training plan of each scheme, shared/rate/plan.py), and the network that has the levels
RATE_ROOM = (ROOT / "shared" / "rate", ROOT / "shared" / "codec")


def _sources() -> Iterator[Path]:
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "_proto" not in path.parts:  # generated stubs
                yield path


def test_no_task_checks_outside_the_task_module():
    found = []
    for path in _sources():
        if TASK_PACKAGE in path.parents:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for what, pattern in TASK_CHECKS:
                if pattern.search(code):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {what}: {line.strip()}")
    assert not found, ("task checks outside shared/tasks/ (ask the task: shared.tasks.get_task(spec.task)):\n"
                       + "\n".join(found))


def test_the_task_check_patterns_catch_what_they_should():
    caught = ['if spec.task == "segmentation":', "if model.spec.task != 'classification':", "if t.dim() == 4:",
              "if out.ndim == 4:", 'if model.startswith("cifar"):', 'if name.endswith("_seg") and n == 11:',
              'elif "segmentation" == task:', "if task in ('segmentation',):"]
    fine = ["task=spec.task,", 'x = t.dim()', 'if k.startswith("rate."):', "self.task = get_task(spec.task)",
            'key = METRICS[task]']
    hit = lambda s: any(p.search(s) for _, p in TASK_CHECKS)  # noqa: E731
    assert all(hit(s) for s in caught), [s for s in caught if not hit(s)]
    assert not any(hit(s) for s in fine), [s for s in fine if hit(s)]


def _level_checks(path: Path) -> List[str]:
    found = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        found += [f"{path.relative_to(ROOT)}:{n}: {what}: {line.strip()}" for what, p in LEVEL_CHECKS if p.search(code)]
    return found


def test_no_level_checks_outside_the_rate_scheme():
    found = [hit for path in _sources() if not any(room in path.parents for room in RATE_ROOM)
             for hit in _level_checks(path)]
    assert not found, ("ladder-or-variable-rate checks outside shared/rate/ (ask the bundle's scheme: bundle.scheme."
                       "point / outcome / points / variable; training: shared.rate.training_plan):\n"
                       + "\n".join(found))


def test_the_level_check_patterns_catch_what_they_should():
    caught = ["if bundle.config.levels is not None:", "if self.levels is None:", "lams = a if levels is None else b",
              "if b.config.levels:", "x = 1 if opts.levels else 2", "if levels:"]
    fine = ["lo, hi = coder.levels", "vr = VariableRate(levels=scheme.levels, curve=curve)", "if scheme.variable:",
            "if level is None:", "levels = self.levels"]
    hit = lambda s: any(p.search(s) for _, p in LEVEL_CHECKS)  # noqa: E731
    assert all(hit(s) for s in caught), [s for s in caught if not hit(s)]
    assert not any(hit(s) for s in fine), [s for s in fine if hit(s)]


# ------------------------------------------------------------------------------------------ import graph
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: Optional[str]) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> Dict[str, Set[str]]:
    """module -> the modules of the three packages it imports (anywhere in the file: top level, functions,
    ``TYPE_CHECKING`` blocks), relative imports resolved, ``from package import submodule`` counted as an import
    of the submodule."""
    files = {_module_name(p): p for p in _sources()}
    known = set(files)

    def closest(name: str) -> Optional[str]:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: Dict[str, Set[str]] = {}
    for mod, path in files.items():
        is_package = path.name == "__init__.py"
        edges: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_package, node.level, node.module)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            for t in targets:
                if t.split(".")[0] in PACKAGES:
                    hit = closest(t)
                    if hit is not None and hit != mod:
                        edges.add(hit)
        graph[mod] = edges
    return graph


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), each as a path."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # the graph is small: recursion depth is at most the number of modules
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for comp in components:  # a shortest cycle through the component's first module (breadth-first)
        members, start = set(comp), sorted(comp)[0]
        prev: Dict[str, Optional[str]] = {start: None}
        queue, end = [start], None
        while queue and end is None:
            nxt = []
            for v in queue:
                for w in sorted(graph[v] & members):
                    if w == start:
                        end = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            queue = nxt
        path, v = [], end
        while v is not None:
            path.append(v)
            v = prev[v]
        cycles.append(list(reversed(path)) + [start])
    return cycles


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_the_codec_imports_no_rate_control():
    """shared/codec codes at a level (shared.codec.levels); choosing the level is shared.rate's, above it."""
    g = import_graph()
    up = {(m, t) for m, ts in g.items() if m == "shared.codec" or m.startswith("shared.codec.")
          for t in ts if t in ("shared.ratecontrol", "shared.rate") or t.startswith("shared.rate.")}
    assert not up, sorted(up)


def test_the_cycle_finder_finds_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    cycles = find_cycles(g)
    assert sorted(tuple(c) for c in cycles) == [("a", "b", "c", "a"), ("e", "e2", "e")]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_imports_inside_functions_and_relative_ones():
    g = import_graph()
    # shared/models/split.py: "from .registry import ..." at the top
    assert "shared.models.registry" in g["shared.models.split"]
    # the package imports its families, so that they register (timm's way)
    assert "shared.models.families" in g["shared.models"]


# ------------------------------------------------------------------------------------------ layers
# package -> the packages it must never import, at the top of a file or inside a function
NEVER_IMPORTS = {"shared": {"edge_client", "cloud_server", "splitinfer"},
                 "edge_client": {"cloud_server", "splitinfer"},
                 "cloud_server": {"splitinfer"}}


def imported_names(module: str, is_package: bool, tree: ast.AST) -> Iterator[Tuple[int, str]]:
    """(line, absolute module name) of every import in ``tree`` (written in ``module``), wherever it is: the top,
    a function, a ``TYPE_CHECKING`` block; relative ones resolved; ``importlib.import_module("...")`` and
    ``__import__("...")`` of a constant name too (an import all the same)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, _resolve(module, is_package, node.level, node.module)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            yield node.lineno, node.args[0].value


def upward_imports(path: Path, source: Optional[str] = None) -> List[str]:
    """The imports in ``path`` (or in ``source``, as if written there) of a package its own must never import."""
    module, package = _module_name(path), path.relative_to(ROOT).parts[0]
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    return [f"{path.relative_to(ROOT)}:{line}: imports {name}"
            for line, name in imported_names(module, path.name == "__init__.py", tree)
            if name.split(".")[0] in NEVER_IMPORTS.get(package, ())]


def test_imports_run_downward_only():
    """shared <- edge_client, cloud_server <- splitinfer: no module imports a package above its own."""
    found = [hit for path in _sources() for hit in upward_imports(path)]
    assert not found, ("imports that run upward (the library imports no client, server or application; the client "
                       "and the server no application; the edge client no server):\n" + "\n".join(found))


def test_the_upward_import_finder_sees_every_kind_of_import():
    lib, client = ROOT / "shared" / "bundle.py", ROOT / "edge_client" / "options.py"
    caught = {lib: ["import cloud_server", "from splitinfer.cli import main", "def f():\n    import edge_client.client",
                    "if TYPE_CHECKING:\n    from cloud_server.server import SplitInferServer",
                    "import importlib\nimportlib.import_module('splitinfer.demo')"],
              client: ["def f():\n    from cloud_server import CloudDecoder", "from splitinfer import tables"]}
    fine = {lib: ["from . import errors", "from .rate import scheme", "import json", "x = 'cloud_server.server'",
                  "def f():\n    from shared.labels import class_names"],
            client: ["from shared.bundle import load_bundle", "from . import package"]}
    assert all(upward_imports(p, src) for p, srcs in caught.items() for src in srcs), \
        [src for p, srcs in caught.items() for src in srcs if not upward_imports(p, src)]
    assert not any(upward_imports(p, src) for p, srcs in fine.items() for src in srcs)


# ------------------------------------------------------------------------------------------ the edge's wire
TRANSPORT_ROOM = ROOT / "edge_client" / "transports.py"
WIRE_MODULES = ("grpc", "httpx", "shared._proto")


def _wire_reaches(path: Path, source: Optional[str] = None) -> List[str]:
    """Where ``path``'s code touches the wire itself: imports grpc, httpx or the generated stubs, reads a ``stub``
    or ``channel`` attribute, or passes ``metadata=`` to a call."""
    found = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        what = next((f"imports {n}" for n in names if any(n == m or n.startswith(m + ".") for m in WIRE_MODULES)), None)
        if isinstance(node, ast.Attribute) and node.attr in ("stub", "channel"):
            what = f"reads .{node.attr}"
        elif isinstance(node, ast.Call) and any(k.arg == "metadata" for k in node.keywords):
            what = "passes gRPC call metadata"
        if what:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {what}")
    return found


def test_only_the_transports_touch_the_wire():
    found = [hit for path in sorted((ROOT / "edge_client").rglob("*.py")) if path != TRANSPORT_ROOM
             for hit in _wire_reaches(path)]
    assert not found, ("the edge's wire outside edge_client/transports.py (use the Transport protocol: request, "
                       "infer, stream, models, edge_package):\n" + "\n".join(found))
    assert _wire_reaches(TRANSPORT_ROOM), "the transports no longer touch the wire: is the room elsewhere now?"


def test_the_wire_patterns_catch_what_they_should():
    caught = ["import grpc", "from shared._proto import splitinfer_pb2 as pb", "import httpx",
              "from shared import _proto", "call = t.stub.InferStream(reqs)", "t.channel.close()",
              "f(req, timeout=1, metadata=t.metadata)"]
    fine = ["from shared.rate import BitrateHint", "info.metadata[k] = val", "have = info.metadata.get(key)",
            "answers = transport.stream(reqs, None, 10.0)", "import json"]
    hit = lambda s: bool(_wire_reaches(ROOT / "x.py", s))  # noqa: E731
    assert all(hit(s) for s in caught), [s for s in caught if not hit(s)]
    assert not any(hit(s) for s in fine), [s for s in fine if hit(s)]


# ------------------------------------------------------------------------------------------ docs
def test_the_error_kinds_in_the_service_docs_are_the_ones_the_server_sends():
    """docs/service.md's table of error kinds lists exactly the kinds of cloud_server/errors.py."""
    import cloud_server.errors as errors

    def subclasses(cls):
        for c in cls.__subclasses__():
            yield c
            yield from subclasses(c)

    sent = {errors.SplitInferError.kind} | {c.kind for c in subclasses(errors.SplitInferError)
                                             if c.__module__ == errors.__name__}
    lines = (ROOT / "docs" / "service.md").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.replace(" ", "").startswith("|kind|HTTP|gRPC|"))
    documented = set()
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        documented.add(ln.split("|")[1].strip())
    assert documented == sent, f"documented only: {documented - sent}; sent but not documented: {sent - documented}"


# ------------------------------------------------------------------------------------------ tasks
def test_every_backbone_names_a_registered_task_and_a_label_set_of_its_size():
    from shared.labels import LABEL_SETS, label_set
    from shared.models import get_backbone, list_backbones
    from shared.tasks import get_task, list_tasks

    assert set(list_tasks()) >= {"classification", "segmentation"}
    for name in list_backbones():
        spec = get_backbone(name)
        task = get_task(spec)
        assert task.name == spec.task and task.metrics and set(task.metrics) <= set(task.metric_labels)
        assert spec.labels in LABEL_SETS and LABEL_SETS[spec.labels][0] == spec.num_classes, name
        # what the torch-free edge picks by the number of classes is the set the backbone names
        assert label_set(None, spec.num_classes) == spec.labels, name
        assert len(task.class_names(spec)) == len(task.palette(spec)) == spec.num_classes


def test_a_metric_a_task_adds_reaches_both_transports_without_other_changes():
    """A figure the data plane does not know by name travels in the rung metadata (REST JSON) and in
    ``RungInfo.metrics`` (gRPC); the figures older clients read from fields of their own are set too."""
    from cloud_server.grpc.native_service import from_metadata
    from cloud_server.types import ModelMetadata, RungMetadata

    rung = RungMetadata(index=0, lam=1.0, bpp=0.5, n_images=3, top1=0.75, boundary_f1=0.25, miou=None)
    meta = ModelMetadata(name="m", bundle_id="b", backbone="x", split="y", task="classification", input_hw=(8, 8),
                         rate_model="r", num_classes=3, backbone_loaded=True, rungs=[rung])
    assert rung.metrics() == {"top1": 0.75, "boundary_f1": 0.25}
    assert meta.model_dump()["rungs"][0]["boundary_f1"] == 0.25
    info = from_metadata(meta).rungs[0]
    assert dict(info.metrics) == {"top1": 0.75, "boundary_f1": 0.25}
    assert info.HasField("top1") and info.top1 == 0.75 and not info.HasField("miou") and info.bpp == 0.5


# ------------------------------------------------------------------------------------------ the torch-free cloud
# what a server that serves cloud packages (cloud_server.onnx_runtime) imports at start: none of it may import torch
TORCH_FREE_CLOUD = ("cloud_server.onnx_runtime", "cloud_server.repository", "cloud_server.server",
                    "cloud_server.rest.app", "cloud_server.grpc.server", "cloud_server.grpc.oip_service",
                    "cloud_server.batching", "cloud_server.decoder", "shared.tasks", "splitinfer.cli.serve")


def test_the_onnx_cloud_runtime_imports_no_torch():
    """In a fresh interpreter, importing the torch-free cloud's modules loads no torch, torchvision or compressai
    (the PyTorch runtime imports them where it builds a decoder; tests/test_cloud_onnx.py serves with them
    blocked)."""
    import subprocess
    import sys

    code = ("import sys, importlib\n"
            f"for m in {TORCH_FREE_CLOUD!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'compressai')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout


# ------------------------------------------------------------------------------------------ the cloud's rooms
CLOUD = ROOT / "cloud_server"
ROOMS = ("cloud_server.grpc", "cloud_server.rest")


def _in(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_the_grpc_and_rest_rooms_import_neither_each_other_nor_are_imported_by_the_core():
    g = import_graph()
    assert any(_in(m, "cloud_server.grpc") for m in g) and any(_in(m, "cloud_server.rest") for m in g)
    bad = []
    for mod, targets in g.items():
        for room in ROOMS:
            if _in(mod, room) or mod == "cloud_server.server":  # a room's own modules; the composition root
                continue
            bad += [(mod, t) for t in targets if _in(t, room)]
    assert not bad, sorted(bad)


def _cloud_trees() -> Iterator[Tuple[Path, ast.AST]]:
    for path in sorted(CLOUD.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _aborts(tree: ast.AST) -> bool:
    """Whether the code calls an ``abort`` (``context.abort(...)``, ``abort(...)``, ``self._abort(...)``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name.lstrip("_") == "abort":
                return True
    return False


def test_only_the_status_module_aborts_a_grpc_call():
    status = CLOUD / "grpc" / "status.py"
    found = [str(p.relative_to(ROOT)) for p, tree in _cloud_trees() if p != status and _aborts(tree)]
    assert not found, f"abort outside cloud_server/grpc/status.py (raise a SplitInferError instead): {found}"
    assert _aborts(ast.parse(status.read_text()))


def test_the_abort_finder_finds_aborts():
    assert _aborts(ast.parse("context.abort(code, 'x')")) and _aborts(ast.parse("self._abort(context, e)"))
    assert _aborts(ast.parse("abort(context, e)")) and not _aborts(ast.parse("raise InvalidArgument('abort(')"))


def test_every_grpc_servicer_method_answers_errors_through_the_decorator():
    methods = []
    for path in sorted((CLOUD / "grpc").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ClassDef) and any(
                    (b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "")).endswith("Servicer")
                    for b in node.bases)):
                continue
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name[:1].isupper():  # the rpc methods (CamelCase)
                    decorators = {getattr(d, "id", getattr(d, "attr", None)) for d in f.decorator_list}
                    methods.append((f"{path.name}:{node.name}.{f.name}", "answers_errors" in decorators))
    assert len(methods) >= 11, methods  # 4 native + 7 OIP: the finder sees them
    assert all(ok for _, ok in methods), [m for m, ok in methods if not ok]


def _string_constants(tree: ast.AST) -> Set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            v = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
            out.add(v.lower())
    return out


def test_one_api_key_reader():
    """Only cloud_server/auth.py looks for the headers that carry an API key; the rooms call it."""
    headers = {"authorization", "x-api-key"}
    found = [str(p.relative_to(ROOT)) for p, tree in _cloud_trees()
             if p != CLOUD / "auth.py" and _string_constants(tree) & headers]
    assert not found, f"API-key headers read outside cloud_server/auth.py: {found}"
    assert _string_constants(ast.parse((CLOUD / "auth.py").read_text())) >= headers


def test_one_validation_error_formatter():
    """Only errors.describe_validation reads pydantic's error entries (their "loc" and "msg")."""
    found = [str(p.relative_to(ROOT)) for p, tree in _cloud_trees()
             if p != CLOUD / "errors.py" and {"loc", "msg"} & _string_constants(tree)]
    assert not found, f"a validation error worded outside cloud_server/errors.py: {found}"


# ------------------------------------------------------------------------------------------ the task's outputs
def _output_names() -> Set[str]:
    from shared.tasks import get_task, list_tasks

    return {o.name for t in list_tasks() for o in get_task(t).outputs(0)}


def _output_names_in(tree: ast.AST, names: Set[str]) -> List[Tuple[int, str]]:
    """String constants that are an output's name, and keyword arguments or annotated fields of that name
    (``Foo(mask_png=...)``, ``mask_png: bytes``), with their lines, in source order. Reading an answer through a typed
    accessor (``result.mask_png``, a property that asks ``shared.tasks.segmentation``) is what the rule wants."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.keyword) and node.arg in names:
            found.append((node.value.lineno, node.arg))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in names:
            found.append((node.lineno, node.target.id))
    return sorted(found)


def test_no_output_name_outside_the_task_module():
    """The task owns its outputs on the wire (issue 27, step 5): their names (the ranked classes' and the task's
    own, ``Task.outputs``) appear in ``shared/tasks`` only; transports copy outputs by datatype, the proto has a map of
    named tensors, and a new task's outputs travel without touching a transport."""
    names = _output_names()
    found = []
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        if TASK_PACKAGE in path.parents:
            continue
        found += [f"{rel}:{line}: {name}" for line, name in _output_names_in(ast.parse(path.read_text()), names)]
    proto = (ROOT / "proto" / "splitinfer.proto").read_text()
    found += [f"proto/splitinfer.proto: {n}" for n in names if re.search(rf"\b{n}\b", proto)]
    assert not found, "output names outside shared/tasks:\n" + "\n".join(found)


def test_the_output_name_finder_finds_names():
    names = {"mask_png", "topk_index"}
    src = "x = out['topk_index']\nR(mask_png=b'')\nclass A:\n    mask_png: bytes = b''\ny = 'the mask_png output'\n"
    assert [n for _, n in _output_names_in(ast.parse(src), names)] == ["topk_index", "mask_png", "mask_png"]

