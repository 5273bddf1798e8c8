"""HTTP/1.1 static files beside the binary protocol: a pure policy and a trio adapter.

The pieces, one concept each (imports flow downwards):

- ``server``: the trio adapter, :func:`serve_http` over the worker's transport seam
  (:func:`serve_http_connection` for a trio stream, :func:`serve_http_socket` for a
  raw socket), :func:`refuse_http_connection`
- ``policy``: :class:`StaticSite`, a parsed request -> :class:`Response` (no trio)
- ``websocket``: the WebSocket handshake's rules, a request for ``http.websocket_path`` ->
  101 or a refusal (no trio); the connection then belongs to ``trioserver.ws_transport``
- ``parser``: :class:`HttpConnection`, bytes -> requests over httptools (no trio)
- ``files``: URL path -> checked file, with the hot-file cache
- ``paths``, ``conditional``, ``status``, ``content_types``: the rules, as tables and pure functions
"""

from .files import FileRange
from .parser import (
    NEED_HTTP_DATA,
    ConnectionClosed,
    HttpConnection,
    LocalHttpError,
    Rejected,
    Request,
)
from .policy import BUNDLED_SITE, Response, StaticSite
from .server import (
    HttpConnectionState,
    refuse_http_connection,
    serve_http,
    serve_http_connection,
    serve_http_socket,
)

__all__ = [
    "BUNDLED_SITE",
    "NEED_HTTP_DATA",
    "ConnectionClosed",
    "FileRange",
    "HttpConnection",
    "HttpConnectionState",
    "LocalHttpError",
    "Rejected",
    "Request",
    "Response",
    "StaticSite",
    "refuse_http_connection",
    "serve_http",
    "serve_http_connection",
    "serve_http_socket",
]
