"""splitinfer's common library: split models, bottleneck codecs, bitstream, bundles, training, evaluation.

Both the edge client and the cloud server build on this package; it never imports either of them.
"""

__version__ = "0.1.0"
