"""Build hook only (the project is declared in pyproject.toml): generate the gRPC stubs into shared/_proto before
the modules are collected, so that a wheel built from a clean checkout carries them (they are never committed;
an installed wheel has no proto/ to generate them from)."""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithStubs(build_py):
    def run(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from shared.proto_build import ensure_generated  # stdlib + grpcio-tools (a build requirement)

        ensure_generated()
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
