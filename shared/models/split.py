"""Cut a frozen backbone into an edge head and a cloud tail with ``torch.fx``.

The full network is traced once (torchvision's ``NodePathTracer``, so nodes carry qualified names such as
``layer1.2.relu_2``). A split point names a node (or a module: its last node). The head is every node that
node depends on; the tail is a copy of the graph in which the split node becomes a placeholder and nodes only
the head needs are dropped. The cut is checked: after it, the original input may only be read for its
*shape* (``x.shape`` / ``x.size()`` / ``x.dim()``), e.g. EfficientNet's ``inputs.size(0)`` or DeepLab's final
upsampling to the input size. So the tail takes ``(feature, x)`` where ``x`` may be a tensor on the ``meta``
device with the input's shape. A residual connection crossing the cut raises ``ValueError``.

No model file is copied or patched: the head and tail ``GraphModule``s share the original modules.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
import torch.fx as fx
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer

from .families import freeze
from .registry import BackboneSpec, SplitPoint, get_backbone, list_backbones

__all__ = [
    "SplitModel",
    "load_split_model",
    "split_graph",
    "split_info",
    "describe_models",
    "trace_with_names",
    "weights_fingerprint",
]


# ------------------------------------------------------------------------------------------------ tracing
def trace_with_names(model: nn.Module, leaf_modules: Iterable[type] = ()) -> Tuple[fx.Graph, Dict[fx.Node, str]]:
    """Trace ``model`` symbolically; return the graph and each node's qualified name (``NodePathTracer``)."""
    tracer = NodePathTracer(leaf_modules=list(leaf_modules))
    graph = tracer.trace(model)
    names = {n: tracer.node_to_qualname.get(n, n.name) for n in graph.nodes}
    return graph, names


def _find_node(graph: fx.Graph, names: Dict[fx.Node, str], query: str) -> fx.Node:
    """The node named ``query``, or, if ``query`` is a module path, the last node inside that module."""
    depth = query.count(".")
    found = None
    for n in graph.nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        q = names[n]
        if q == query or ".".join(q.split(".")[: depth + 1]) == query:
            found = n
    if found is None:
        candidates = sorted({names[n].rsplit(".", 1)[0] for n in graph.nodes if n.op == "call_module"})
        raise KeyError(
            f"no node or module {query!r} in the traced graph; module paths include: "
            f"{', '.join(candidates[:40])}{' ...' if len(candidates) > 40 else ''}"
        )
    return found


def _is_shape_read(n: fx.Node) -> bool:
    if n.op == "call_function" and n.target is getattr and len(n.args) >= 2:
        return n.args[1] in ("shape", "ndim")
    return n.op == "call_method" and n.target in ("size", "dim")


def _split_traced(
    root: nn.Module, graph: fx.Graph, names: Dict[fx.Node, str], query: str
) -> Tuple[fx.GraphModule, fx.GraphModule]:
    cut = _find_node(graph, names, query)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"can only split single-input models; forward takes {[p.name for p in placeholders]}")
    x = placeholders[0]
    out_node = next(n for n in graph.nodes if n.op == "output")

    # ---- head: the cut node and everything it depends on
    head_nodes: Set[fx.Node] = {cut}
    stack = [cut]
    while stack:
        for a in stack.pop().all_input_nodes:
            if a not in head_nodes:
                head_nodes.add(a)
                stack.append(a)
    head_nodes.add(x)
    head = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    for n in graph.nodes:
        if n in head_nodes:
            env[n] = head.node_copy(n, lambda a: env[a])
    head.output(env[cut])

    # ---- tail: what the output needs, with the cut node as an input
    needed: Set[fx.Node] = set()
    stack = [out_node]
    reaches_cut = False
    while stack:
        for a in stack.pop().all_input_nodes:
            if a is cut:
                reaches_cut = True
            elif a not in needed:
                needed.add(a)
                stack.append(a)
    if not reaches_cut:
        raise ValueError(f"the model's output does not depend on {query!r} ({cut.name}); nothing to split")

    # Nodes whose *value* depends on the input other than through the cut (shape reads do not carry the
    # dependency) cannot run in the tail, which gets the input's shape only.
    tainted: Set[fx.Node] = {x}
    after_cut: Set[fx.Node] = {cut}
    for n in graph.nodes:
        inputs = n.all_input_nodes
        if any(a in after_cut for a in inputs):
            after_cut.add(n)
        if n is cut or n is x or _is_shape_read(n):
            continue
        if any(a in tainted for a in inputs):
            tainted.add(n)
    bad = [n for n in graph.nodes if n in needed and n in tainted and n is not x]
    bad += [u for u in x.users if u in needed and not _is_shape_read(u) and u not in bad]
    if bad:
        # report an edge that crosses the cut: a node computed without the cut, consumed after it
        crossing = [
            (n, u)
            for n in [x] + [b for b in graph.nodes if b in bad and b not in after_cut]
            for u in n.users
            if (u in after_cut or u is out_node) and (u in needed or u is out_node) and not _is_shape_read(u)
        ]
        n, u = crossing[0] if crossing else (bad[0], None)
        used_by = f" by {names[u]!r}" if u is not None and u.op != "output" else " as an output" if u is not None else ""
        what = "the input itself" if n is x else f"node {names[n]!r}, computed from the input before the cut,"
        raise ValueError(
            f"invalid split at {query!r} (node {names[cut]!r}): {what} is used after the cut{used_by} "
            "(e.g. a residual connection crosses the cut); after the cut only the input's shape may be read"
        )

    tail = fx.Graph()
    env = {cut: tail.placeholder("feature"), x: tail.placeholder("x")}
    for n in graph.nodes:
        if n in needed and n is not x:
            env[n] = tail.node_copy(n, lambda a: env[a])
    tail.node_copy(out_node, lambda a: env[a])

    head_gm = fx.GraphModule(root, head, class_name="SplitHead")
    tail_gm = fx.GraphModule(root, tail, class_name="SplitTail")
    head_gm.graph.lint()
    tail_gm.graph.lint()
    return head_gm, tail_gm


def split_graph(
    model: nn.Module, node_qualname: str, leaf_modules: Sequence[type] = ()
) -> Tuple[fx.GraphModule, fx.GraphModule]:
    """Split ``model`` after the node (or module) ``node_qualname`` into ``(head, tail)`` GraphModules.

    ``head(x) -> feature``; ``tail(feature, x) -> output``, where the tail reads at most ``x``'s shape.
    Raises ``KeyError`` for an unknown name and ``ValueError`` when something other than the feature crosses
    the cut. Both share ``model``'s submodules (no copies).
    """
    graph, names = trace_with_names(model, leaf_modules)
    return _split_traced(model, graph, names, node_qualname)


def _select_output(tail: fx.GraphModule, key: str) -> None:
    """Make ``tail`` return ``output[key]`` when the traced output is a dict (DeepLab's ``{"out": ...}``)."""
    out_node = next(n for n in tail.graph.nodes if n.op == "output")
    value = out_node.args[0]
    if isinstance(value, dict):
        if key not in value:
            raise KeyError(f"model output has keys {list(value)}, not {key!r}")
        out_node.args = (value[key],)
        tail.graph.eliminate_dead_code()
        tail.graph.lint()
        tail.recompile()


# ---------------------------------------------------------------------------------------------- SplitModel
class SplitModel(nn.Module):
    """A frozen backbone cut in two: ``forward(x) == tail(head(x), x)`` == the unsplit model's output
    (for segmentation models with ``spec.output_key``, that entry of the output dict, i.e. a tensor).

    Always in eval mode with ``requires_grad=False``; :meth:`train` is a no-op so BatchNorm statistics never
    move while a codec is trained around the backbone.
    """

    def __init__(self, spec: BackboneSpec, split: SplitPoint, head: fx.GraphModule, tail: fx.GraphModule):
        super().__init__()
        self.spec = spec
        self.split = split
        self.head = head
        self.tail = tail
        self._feature_shapes: Dict[Tuple[int, int], Tuple[int, ...]] = {}
        self.requires_grad_(False)
        super().train(False)

    def forward(self, x: torch.Tensor) -> Any:
        return self.tail(self.head(x), x)

    def run_tail(self, feature: torch.Tensor, input_shape: Sequence[int]) -> Any:
        """Run the cloud side from a (decoded) feature; ``input_shape`` is the edge input's (N, C, H, W)."""
        x_meta = torch.empty(tuple(int(s) for s in input_shape), device="meta", dtype=feature.dtype)
        return self.tail(feature, x_meta)

    def feature_shape(self, input_hw: Optional[Tuple[int, int]] = None) -> Tuple[int, ...]:
        """(C, H, W) of the head's output for a ``(H, W)`` input (default: the spec's input size)."""
        hw = tuple(int(v) for v in (input_hw or self.spec.preprocess.input_size))
        if hw not in self._feature_shapes:
            self._feature_shapes[hw] = _head_output_shape(self.head, hw)
        return self._feature_shapes[hw]

    def fingerprints(self) -> Dict[str, str]:
        """``{"head": ..., "tail": ...}``: a hash of each half's weights and buffers, recorded in a bundle at
        training time so that edge and cloud can refuse weights the ladder was not trained against."""
        if not hasattr(self, "_fingerprints"):
            self._fingerprints = {"head": weights_fingerprint(self.head), "tail": weights_fingerprint(self.tail)}
        return dict(self._fingerprints)

    def train(self, mode: bool = True) -> "SplitModel":
        # Frozen by design: stay in eval mode whatever is asked (keeps BatchNorm statistics fixed).
        return super().train(False)

    def extra_repr(self) -> str:
        return f"model={self.spec.name!r}, split={self.split.name!r} ({self.split.node})"


def _head_output_shape(head: nn.Module, hw: Tuple[int, int]) -> Tuple[int, ...]:
    """Shape inference without computing: fake tensors (works for real, CUDA or meta parameters)."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            x = torch.empty(1, 3, *hw)
            out = head(x)
        return tuple(int(s) for s in out.shape[1:])
    except Exception:  # noqa: BLE001 - private API; fall back to a real forward on zeros
        p = next(head.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        with torch.no_grad():
            out = head(torch.zeros(1, 3, *hw, device=device))
        return tuple(int(s) for s in out.shape[1:])


def _resolve_split(spec: BackboneSpec, split: Optional[str]) -> SplitPoint:
    name = split or spec.default_split
    try:
        return spec.split_points[name]
    except KeyError:
        raise KeyError(
            f"unknown split point {name!r} for model {spec.name!r}; valid split points: "
            f"{', '.join(spec.split_points)}"
        ) from None


def load_split_model(
    name: str, split: Optional[str] = None, weights: Optional[str] = None, model: Optional[nn.Module] = None
) -> SplitModel:
    """Build (or take ``model``, which is frozen in place) backbone ``name`` and cut it at ``split``
    (default: the spec's ``default_split``). ``weights``: None = default pretrained, "random", or a path."""
    spec = get_backbone(name)
    sp = _resolve_split(spec, split)
    if model is None:
        model = spec.build(weights)
    freeze(model)
    head, tail = split_graph(model, sp.node, spec.leaf_modules)
    if spec.output_key is not None:
        _select_output(tail, spec.output_key)
    return SplitModel(spec, sp, head, tail)


def weights_fingerprint(module: nn.Module) -> str:
    """16 hex digits of SHA-256 over ``module``'s state dict (names, dtypes, shapes, values), wherever it lives.
    The head and tail GraphModules keep the original module names, so the same weights hash the same."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu")
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- FLOPs
@functools.lru_cache(maxsize=None)
def _meta_trace(name: str):
    """Random-init model on the meta device (no memory, no init cost) and its trace, cached per model."""
    spec = get_backbone(name)
    with torch.device("meta"):
        model = spec.build("random")
    graph, names = trace_with_names(model, spec.leaf_modules)
    x = torch.empty(1, 3, *spec.preprocess.input_size, device="meta")
    total = _count_flops(model, x)
    return spec, model, graph, names, total


def _count_flops(fn, *args) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def split_info(name: str, split: Optional[str] = None) -> Dict[str, Any]:
    """Depth, feature shape and FLOPs of a split at the spec's input size, batch 1.

    FLOPs are ``FlopCounterMode``'s (2 per multiply-accumulate of convolutions / matmuls; BatchNorm, ReLU and
    adds are not counted). They do not depend on the weights, so they are counted on a meta-device copy with
    random init.
    """
    spec, model, graph, names, total = _meta_trace(name)
    sp = _resolve_split(spec, split)
    head, _ = _split_traced(model, graph, names, sp.node)
    x = torch.empty(1, 3, *spec.preprocess.input_size, device="meta")
    with torch.no_grad():
        feat = head(x)
    edge = _count_flops(head, x)
    return {
        "name": spec.name,
        "split": sp.name,
        "depth": sp.depth,
        "feature_shape": tuple(int(s) for s in feat.shape[1:]),
        "edge_flops": edge,
        "total_flops": total,
        "edge_flop_share": edge / total if total else float("nan"),
        "input_size": tuple(spec.preprocess.input_size),
        "description": sp.description,
    }


def describe_models() -> List[Dict[str, Any]]:
    """One row per (model, split point) for ``splitinfer models``: model, task, split, default, depth,
    feature_shape (C, H, W), edge/total FLOPs, edge_flop_share (fraction) and edge_flop_share_pct, input_size
    the numbers are measured at (the spec's), description. Random weights, meta device: no downloads, fast."""
    rows = []
    for name in list_backbones():
        spec = get_backbone(name)
        for sp_name in spec.split_points:
            info = split_info(name, sp_name)
            rows.append(
                {
                    "model": name,
                    "task": spec.task,
                    "split": sp_name,
                    "default": sp_name == spec.default_split,
                    "depth": info["depth"],
                    "feature_shape": info["feature_shape"],
                    "edge_flops": info["edge_flops"],
                    "total_flops": info["total_flops"],
                    "edge_flop_share": info["edge_flop_share"],
                    "edge_flop_share_pct": round(100.0 * info["edge_flop_share"], 1),
                    "input_size": info["input_size"],
                    "description": info["description"],
                }
            )
    return rows
