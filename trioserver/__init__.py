"""trioserver: long-lived TCP connections on trio, speaking the course's binary protocol."""

from __future__ import annotations

__version__ = "0.1.0"
