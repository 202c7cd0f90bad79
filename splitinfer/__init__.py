"""splitinfer's application: the ``splitinfer`` command (:mod:`splitinfer.cli`), the tables it prints
(:mod:`splitinfer.tables`) and the ``demo`` round trip (:mod:`splitinfer.demo`).

The top of the tree: it drives the library (``shared``), the edge client and the cloud server, and none of them
imports it (tests/test_structure.py). Its modules import lazily, so that the edge install (no PyTorch, no
``cloud_server``) runs ``splitinfer edge``.
"""
