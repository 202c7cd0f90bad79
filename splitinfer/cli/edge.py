"""``splitinfer edge``: encode images on this machine and send them to a splitinfer server (options:
:class:`edge_client.options.EdgeOptions`)."""

from __future__ import annotations

import sys

from shared.errors import UserError
from shared.options import options


def run_edge(args) -> int:
    from edge_client import ServiceError
    from edge_client.options import EdgeOptions, find_images

    from shared.rate import HintError
    from shared.reporting import write_mask

    from ..tables import EDGE_HEADER, edge_row, hint_summary

    opts = options(EdgeOptions, args)
    hint, images = opts.hint(), find_images(opts.images)
    client, failed, skipped, sent, target, outcomes = opts.client(), 0, 0, [], None, []
    with client:
        try:
            if opts.stream:  # what the bundle cannot stream is refused before connecting
                client.bundle.scheme.check_stream(hint, opts.track_link)
            client.connect()
            if not opts.json:
                print(f"server {opts.server} ({_wire(opts)}), model {client.model}, bundle "
                      f"{client.bundle.bundle_id}, hint: {hint if opts.rung is None else f'rung {opts.rung}'}")
                print(EDGE_HEADER + "\n" + "-" * len(EDGE_HEADER))
            results = (client.stream(images, rung=opts.rung, hint=hint, track_link=opts.track_link) if opts.stream
                       else client.infer_many(images, rung=opts.rung, hint=hint))
            for r in results:
                failed += r.error is not None
                skipped += r.skipped
                sent += [r.n_bytes] if r.ok or r.skipped else []  # a skipped frame's time passed with 0 bytes
                target = r.target_kbps if r.target_kbps is not None else target
                outcomes += [r.hint_outcome] if r.ok else []
                mask = None
                if r.ok and r.mask_png and opts.write_masks:
                    enc = client.encoder
                    mask = write_mask(r, opts.masks_dir, enc.num_classes, getattr(enc, "labels", None))
                print(edge_row(r, mask, opts.json), flush=True)
        except ServiceError as e:
            raise UserError(str(e)) from None
        except HintError as e:
            raise UserError(str(e)) from None
    # every hint outcome visible: on stdout under the table, on stderr beside --json's one object per frame
    say = (lambda m: print(m, file=sys.stderr)) if opts.json else print
    for line in hint_summary(outcomes):
        say(line)
    if opts.kbps and sent:  # what the link carried against what it was given
        if not opts.json:
            print(f"sent {8e-3 * sum(sent) / len(sent) * opts.fps:.2f} kbit/s at {opts.fps:g} fps (target "
                  f"{opts.kbps:g}) over {len(sent)} frames" + (f"; following the link, last aimed at {target:.2f} "
                                                               "kbit/s" if target is not None else "")
                  + (f"; {skipped} frames skipped (the link carried less than the coarsest level)" if skipped else ""))
        held = client.bundle.scheme.stream_outcome(hint, sent, skipped) if target is None else None
        if held is not None and held.met is False:  # (following the link, the link's rate is the target)
            say(f"the {'stream' if opts.stream else 'frames'} did not hold --kbps {opts.kbps:g}: {held.reason}")
    if failed and not opts.json:
        print(f"{failed} of {len(images)} images failed", file=sys.stderr)
    return 1 if failed else 0


def _wire(opts) -> str:
    """How the frames travel, as the header says it."""
    if opts.rest:
        return "REST, streamed one request per frame" if opts.stream else "REST"
    return "gRPC, one InferStream" if opts.stream else "gRPC"
