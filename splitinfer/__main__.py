"""``python -m splitinfer``: the ``splitinfer`` command without its console script."""

import sys

from .cli import main

sys.exit(main())
