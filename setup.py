"""Build hooks only (the project is declared in pyproject.toml):

- generate the gRPC stubs into shared/_proto before the modules are collected, so that a wheel built from a clean
  checkout carries them (they are never committed; an installed wheel has no proto/ to generate them from);
- compile the edge's C library: the rANS coder (shared/codec/ranscoder.c) and the integer hyper-decoder
  (shared/codec/hyperdec.c), plain C that shared/codec/rans_compiled.py loads with ctypes. Optional: without a C
  compiler the install goes on and the edge codes with the Python coder and the numpy h_s. -O3: the h_s's sums
  need GCC's loop vectoriser (at -O2 GCC 12 leaves them scalar, about 10x slower).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildPyWithStubs(build_py):
    def run(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from shared.proto_build import ensure_generated  # stdlib + grpcio-tools (a build requirement)

        ensure_generated()
        super().run()


RANS = Extension("shared.codec._ranscoder", sources=["shared/codec/ranscoder.c", "shared/codec/hyperdec.c"],
                 depends=["shared/codec/ranscoder.h", "shared/codec/hyperdec.h"], extra_compile_args=["-O3", "-std=c99"],
                 optional=True)

setup(cmdclass={"build_py": BuildPyWithStubs}, ext_modules=[RANS])
