"""The application a server runs (``master.app``): found, checked, and loaded.

``'module:name'`` names a :class:`~trioserver.dispatch.Router`, or a function
that takes no argument and returns one. Workers import it after the fork
(:func:`load_router`), never the master, so that a reload starts workers on the
code as it is on disk then. The master still checks the name before it starts
any worker (:func:`check_app`): it forks a short-lived process that imports the
module and looks at what the name holds, so a typo or a function that is not a
factory (``examples.echo_server:main``, which runs its own server) fails at
once with a message, instead of in every worker or, worse, by serving nothing.

The check never calls the application's functions: a factory is judged by its
signature and its return annotation. One without an annotation passes the check
and is judged by what it returns, in the worker.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import select
import signal
import time
import typing
from types import ModuleType
from typing import Any, Final

from ..handlers import default_router
from ..handlers.router import Router

__all__ = ["AppError", "check_app", "find_app", "load_router"]

#: Bytes of the check process's error message the master reads.
_MAX_MESSAGE: Final = 16384


class AppError(Exception):
    """``master.app`` names nothing usable; the message says what was found and what to do."""


def _routers_in(module: ModuleType) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if isinstance(value, Router) and not name.startswith("_")
    )


def _hint(module_name: str, module: ModuleType) -> str:
    routers = _routers_in(module)
    if not routers:
        return ""
    names = " or ".join(f"'{module_name}:{name}'" for name in routers)
    return f"; {module_name} has a Router: {names}"


def _declared_return(function: Any) -> Any:
    """What ``function`` is annotated to return; ``inspect.Signature.empty`` if unknown."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation naming what cannot be imported: judge by the text
        raw = getattr(function, "__annotations__", {}).get("return", inspect.Signature.empty)
        return type(None) if raw in ("None", None) else inspect.Signature.empty
    return hints.get("return", inspect.Signature.empty)


def find_app(spec: str) -> Any:
    """The object ``spec`` names, checked without calling it: a Router or a factory of one.

    Raises :class:`AppError` (or the import's own error) naming the spec.
    """
    module_name, _, attr_path = spec.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppError(
                f"application {spec!r}: {module_name} has no {attr_path!r}"
                f"{_hint(module_name, module)}"
            ) from None
    if isinstance(obj, Router):
        return obj
    if not callable(obj):
        raise AppError(
            f"application {spec!r} must be a Router or a function returning one, got "
            f"{obj!r}{_hint(module_name, module)}"
        )
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a signature: judged when called
        return obj
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise AppError(
            f"application {spec!r}: {attr_path}() needs arguments ({', '.join(required)}); "
            f"it is called with none and must return a Router{_hint(module_name, module)}"
        )
    declared = _declared_return(obj)
    if declared is not inspect.Signature.empty and not (
        isinstance(declared, type) and issubclass(declared, Router)
    ):
        shown = "None" if declared is type(None) else getattr(declared, "__name__", declared)
        raise AppError(
            f"application {spec!r}: {attr_path}() is declared to return {shown}, not a "
            f"Router; name a Router or a function returning one{_hint(module_name, module)}"
        )
    return obj


def load_router(spec: str) -> Router:
    """The application's Router from ``'module:function'`` (or ``'module:router'``).

    Empty means the built-in handlers. Errors name the spec and what was found.
    """
    if not spec:
        return default_router()
    obj = find_app(spec)
    if not isinstance(obj, Router):
        obj = obj()
    if not isinstance(obj, Router):
        raise AppError(f"application {spec!r} must be a Router or return one, got {obj!r}")
    return obj


def _describe(spec: str, exc: BaseException) -> str:
    if isinstance(exc, AppError):
        return str(exc)
    if isinstance(exc, SystemExit):
        return f"application {spec!r}: importing it called sys.exit({exc.code!r})"
    return f"application {spec!r}: {type(exc).__name__}: {exc}"


def check_app(spec: str, timeout: float) -> None:
    """Check ``spec`` (:func:`find_app`) in a forked process; :class:`AppError` if it fails.

    The fork keeps the application's modules, threads and state out of the master.
    """
    if not spec:
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the check process (tested through the command line)
        code = 70  # EX_SOFTWARE: the check itself broke
        try:
            os.close(read_end)
            try:
                find_app(spec)
                message = ""
            except BaseException as exc:
                message = _describe(spec, exc)
            os.write(write_end, message.encode("utf-8", "replace")[:_MAX_MESSAGE])
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_end], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_end, _MAX_MESSAGE)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if timed_out:
        raise AppError(
            f"application {spec!r}: importing it took longer than {timeout:g} s "
            "(master.boot_timeout)"
        )
    message = b"".join(chunks).decode("utf-8", "replace")
    if message:
        raise AppError(message)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        how = (
            f"exited with code {os.WEXITSTATUS(status)}"
            if os.WIFEXITED(status)
            else f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
        )
        raise AppError(f"application {spec!r}: the process importing it {how}")
