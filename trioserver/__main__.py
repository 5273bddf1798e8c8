"""``python -m trioserver``: see :mod:`trioserver.cli`."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
