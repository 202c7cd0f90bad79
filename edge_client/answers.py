"""What the edge accepts as an answer: each one checked against the frame it answers (torch-free, no transport).

The server is not trusted to be right. An answer that names a rung outside the bundle, a class outside the label
set, more classes than asked for, a score that is not a probability, other bytes than were sent, or outputs that are
not its task's (``shared.tasks.Task.output_problem``) is not printed as a result: :func:`answer_problem` says what is wrong with it, and the client reports that frame as failed. The order
of a stream's answers (one per frame, in order, each with its frame's request id) is kept by the stream
(:class:`edge_client.stream.Frames`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from shared.tasks import Task

__all__ = ["answer_problem", "lost_frames"]

_SCORE_SLACK = 1e-4  # float32 probabilities may sum a hair above 1


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def answer_problem(r, *, rungs: int, num_classes: int, top_k: int, n_bytes: Optional[int] = None,
                   task: Optional[Task] = None) -> Optional[str]:
    """None when the answer ``r`` (an :class:`edge_client.InferResult`) fits a frame of ``n_bytes`` sent with a
    bundle of ``rungs`` rungs and ``num_classes`` classes, asking for ``top_k`` classes; else what does not fit."""
    if not (isinstance(r.rung, int) and 0 <= r.rung < rungs):
        return f"rung {r.rung} is outside the bundle's rungs 0..{rungs - 1}"
    if r.hinted_rung is not None and not 0 <= r.hinted_rung < rungs:
        return f"hinted rung {r.hinted_rung} is outside the bundle's rungs 0..{rungs - 1}"
    if n_bytes is not None and r.n_bytes != n_bytes:
        return f"the server says it received {r.n_bytes} bytes; {n_bytes} were sent"
    if not (_finite(r.bpp) and r.bpp >= 0):
        return f"bpp {r.bpp} is not a finite, non-negative number"
    if len(r.topk) > max(top_k, 1):
        return f"{len(r.topk)} classes answered, {top_k} asked for"
    for index, name, score in r.topk:
        if not (isinstance(index, int) and 0 <= index < num_classes):
            return f"class {index} is outside the label set's {num_classes} classes"
        if not isinstance(name, str):
            return f"class {index} has no name"
        if not (_finite(score) and -_SCORE_SLACK <= score <= 1 + _SCORE_SLACK):
            return f"score {score} of class {index} is not a probability"
    if task is not None:
        problem = task.output_problem(r.outputs, num_classes)
        if problem:
            return problem
    elif r.outputs:
        return f"outputs {', '.join(r.outputs)} from a model whose task is unknown here"
    if any(not (_finite(v) and v >= 0) for v in r.server_timings_ms.values()):
        return "a server timing is not a finite, non-negative number"
    return None


def lost_frames(sources: Sequence[str], limit: int = 8) -> str:
    """'3 frames lost: a.jpg, b.jpg, c.jpg' (the first ``limit`` named)."""
    names = ", ".join(sources[:limit]) + (f" and {len(sources) - limit} more" if len(sources) > limit else "")
    return f"{len(sources)} frame{'s' if len(sources) != 1 else ''} lost: {names}" if sources else "no frame lost"
