"""splitinfer's common library: split models, bottleneck codecs, bitstream, bundles, training, evaluation.

Both the edge client and the cloud server build on this package, and the application (``splitinfer``: the command
and the demo) on all three; it never imports any of them, not even inside a function (tests/test_structure.py).
"""

__version__ = "0.1.0"
