"""Options: dataclasses whose fields carry their own documentation, their command-line flags, and value types.

A use case takes one dataclass of options (``TrainOptions``, ``TeacherOptions``, ``MigrateOptions``,
``EvalOptions``); each field is declared with :func:`option`, whose ``help`` documents it for Python callers and
is the help text of the flag :func:`add_options` makes from it in ``splitinfer``, so a default or a description is
written once. :func:`positive` and :func:`server_address` are argparse value types (a bitrate, ``HOST:PORT``): a
bad value is a one-line usage error of its sub-command. Torch-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import MISSING, field
from typing import Any

__all__ = ["option", "add_options", "options", "positive", "server_address", "DefaultsHelpFormatter", "BUNDLE_HELP",
           "WEIGHTS_HELP"]

# the two options most commands share
BUNDLE_HELP = "bundle folder (default: the embedded efficientnet_lite0 ladder)"
WEIGHTS_HELP = "backbone weights file (default: pretrained)"


def option(default: Any = MISSING, help: str = "", **cli: Any):
    """A dataclass field with its documentation. ``default``: a value, or a callable making one (a list's);
    none = required. ``cli``: argparse details for the flag (``choices``, ``metavar``, ``type``, ``action``),
    ``flag="NAME"`` for a flag ``--NAME`` other than the field's name, ``short="-X"`` for a short form as well,
    ``positional=True`` (with ``nargs``) for an argument without a flag, and ``exclusive="GROUP"``: at most one of
    the fields of that group may be given on the command line."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kw, metadata={"help": help, **cli})


def positive(what: str = "a positive number"):
    """An argparse type: a finite number > 0 (a bitrate: 0, -1, nan and inf are refused with the flag's usage)."""
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"must be {what}, got {s!r}")
        return v
    return parse


def server_address(s: str) -> str:
    """An argparse type: ``HOST:PORT`` (or a URL / gRPC target such as ``dns:///host:50051``, taken as given)."""
    if "://" in s or s.split(":")[0] in ("dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock"):
        return s
    host, sep, port = s.rpartition(":")
    if not (sep and host and port) or host.endswith(":") and not host.startswith("["):  # nor is a bare IPv6
        raise argparse.ArgumentTypeError(f"{s!r} has no port: give HOST:PORT, e.g. {s.strip(':') or 'localhost'}:50051")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"the port of {s!r} must be a number from 1 to 65535")
    return s


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" where it tells something: not for a default of None (not given), not for a switch
    (``--no-resume`` "(default: True)" reads as if the switch were on), not where the help names its default."""

    def _get_help_string(self, action):
        if (action.default is None or action.nargs == 0 or "default" in (action.help or "")
                or action.default is argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def add_options(p: argparse.ArgumentParser, cls, skip=()) -> None:
    """One flag per documented field of the options dataclass ``cls`` (:func:`shared.options.option`):
    ``--field-name`` with its help, default, type, choices; a bool is a switch (``--no-NAME`` when it defaults to
    True; an ``Optional[bool]`` names its ``action``, its default None meaning "not given"); a list is repeatable
    unless the field names a ``type`` that parses one value into the list; fields with the same ``exclusive``
    name form a mutually exclusive group."""
    hints = typing.get_type_hints(cls)
    groups = {}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or f.name in skip:
            continue
        md, hint, name = f.metadata, hints[f.name], f.name.replace("_", "-")
        if md.get("positional"):
            p.add_argument(f.name, help=md["help"], **{k: md[k] for k in ("metavar", "nargs", "type") if k in md})
            continue
        kw = {k: md[k] for k in ("choices", "metavar", "type", "action") if k in md}
        kw |= {"dest": f.name, "help": md["help"]}
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kw |= {"required": True} if required else {
            "default": f.default_factory() if f.default is dataclasses.MISSING else f.default}
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        base = typing.get_origin(inner[0]) or inner[0] if typing.get_origin(hint) is typing.Union else hint
        if hint is bool:
            kw["action"] = "store_false" if f.default else "store_true"
            name = f"no-{name}" if f.default else name
        elif (typing.get_origin(base) or base) is list and "type" not in md and "action" not in md:
            kw["action"] = "append"
        elif "type" not in md and "action" not in md and base in (int, float):
            kw["type"] = base
        name = md.get("flag", name)
        g = md.get("exclusive")
        if g is not None and g not in groups:
            groups[g] = p.add_mutually_exclusive_group()
        (p if g is None else groups[g]).add_argument(*md.get("short", "").split(), f"--{name}", **kw)


def options(cls, args, **given):
    """The options dataclass ``cls`` from parsed ``args`` (fields they lack keep their defaults) and ``given``."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                  if hasattr(args, f.name) and f.name not in given}, **given)
