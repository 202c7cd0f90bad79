"""``splitinfer serve`` (the cloud server: REST and gRPC in one process around one data plane) and ``demo`` (a
round trip through it on loopback: :mod:`splitinfer.demo`).

Flags (:class:`cloud_server.options.ServeOptions`) override ``SPLITINFER_*`` environment variables, which override
``--config FILE`` (JSON); see ``cloud_server/settings.py`` for every setting.
"""

from __future__ import annotations

from shared.errors import UserError
from shared.options import options


def run_serve(args) -> int:
    from cloud_server.logs import configure_logging
    from cloud_server.options import ServeOptions
    from cloud_server.server import SplitInferServer
    from cloud_server.settings import serve_settings

    settings = serve_settings(options(ServeOptions, args))
    configure_logging(settings.log_format, settings.log_level)
    try:
        server = SplitInferServer(settings)
    except (OSError, RuntimeError) as e:  # a port in use, an unreadable certificate, ...
        raise UserError(f"cannot start the server: {e}") from None
    where = [f"gRPC {settings.host}:{server.grpc_port}"] if server.grpc_port is not None else []
    if server.http_port is not None:
        where.append(f"REST http{'s' if settings.tls else ''}://{settings.host}:{server.http_port}")
    print(f"splitinfer serving {', '.join(m.name for m in server.repository.models())} on {' and '.join(where)} "
          "(Ctrl-C stops)", flush=True)
    server.serve_forever()
    return 0


def run_demo(args) -> int:
    import dataclasses

    from ..demo import DemoOptions, run_demo

    return run_demo(**dataclasses.asdict(options(DemoOptions, args)))
