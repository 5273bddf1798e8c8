"""A throwaway PostgreSQL server for tests: initdb in a temporary directory, loopback only.

Finds the server programs on PATH or in Debian's /usr/lib/postgresql/<version>/bin
(``TRIOSERVER_PG_BIN`` overrides). PostgreSQL refuses to run as root, so as root
the cluster belongs to the ``postgres`` system user (the Debian ``postgresql``
package creates it) and every command runs through ``runuser``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import attrs

from ..processes import free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "free_port"]

USER = "trioserver"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why."""


def _bin_dir() -> Path:
    override = os.environ.get("TRIOSERVER_PG_BIN")
    if override:
        return Path(override)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if versions:
        return versions[0].parent
    raise PostgresUnavailable(
        "initdb not found (install PostgreSQL: apt-get install -y postgresql, "
        "or set TRIOSERVER_PG_BIN)"
    )


@attrs.define(eq=False)
class PostgresServer:
    """One cluster in a temporary directory, listening on 127.0.0.1:``port``."""

    root: Path
    port: int
    bin_dir: Path
    run_as: str | None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url_for(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def create(cls) -> PostgresServer:
        bin_dir = _bin_dir()
        run_as: str | None = None
        root = Path(tempfile.mkdtemp(prefix="trioserver-pg-"))
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(root, ignore_errors=True)
                raise PostgresUnavailable(
                    "running as root and there is no 'postgres' user to run PostgreSQL as"
                ) from None
            run_as = "postgres"
            os.chown(root, user.pw_uid, user.pw_gid)
        server = cls(root, free_port(), bin_dir, run_as)
        try:
            server._run(
                "initdb", "-D", str(server.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                "--no-sync", "--no-instructions",
            )  # fmt: skip
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}"
            )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c max_connections=100 -c fsync=on"
        )
        self._run(
            "pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data),
            "-l", str(self.root / "server.log"), "-o", options,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", mode, "-D", str(self.data))

    def destroy(self) -> None:
        with contextlib.suppress(PostgresUnavailable):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
