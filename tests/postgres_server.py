"""A throwaway PostgreSQL server for the tests: ``initdb`` in a temporary folder, one loopback port and a Unix
socket in that folder, stopped (and the folder removed) at the end.

PostgreSQL refuses to run as root, so as root every server command runs as the ``postgres`` user
(``runuser -u postgres --``) and the folder is handed to that user. Binaries are found on ``PATH``, in
``$MVECTOR_PG_BIN``, or under ``/usr/lib/postgresql/<version>/bin``. :func:`start_server` raises
:class:`PostgresUnavailable` with the reason when a server cannot be started (no binaries, no ``postgres`` user);
the pytest fixture turns that into a skip, or into a failure under ``MVECTOR_REQUIRE_POSTGRES=1`` (CI).

Authentication: the superuser ``postgres`` over the Unix socket without a password (for the set-up), and the role
``mvector`` with a password over TCP (``scram-sha-256``), so a wrong password is refused as on a real server.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PASSWORD", "USER", "PostgresServer", "PostgresUnavailable", "find_bin", "start_server"]

USER = "mvector"
PASSWORD = "test-password-1"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here (the message says why)."""


def find_bin() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``psql``."""
    candidates = [os.environ.get("MVECTOR_PG_BIN", "")]
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).resolve().parent))  # a link's target folder
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return Path(folder)
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, psql) not found: install the 'postgresql' package"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One server in a temporary folder (see the module docstring). ``url(dbname)`` gives a TCP URL as ``mvector``."""

    def __init__(self) -> None:
        self.bin = find_bin()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server") from None
        self.folder = Path(tempfile.mkdtemp(prefix="mvector-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.log = self.folder / "server.log"
        self._databases = 0
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.folder)
        if check and done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{' '.join(args[:2])} failed: {done.stderr.strip()[-1500:]} {log}")
        return done

    def init(self) -> None:
        """``initdb`` (superuser ``postgres``: trust on the socket; others: scram-sha-256 over TCP)."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.folder}'\n"
                "fsync = off\nsynchronous_commit = on\nfull_page_writes = off\nmax_connections = 100\n"
                "shared_buffers = 32MB\n"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: as a crash, without a clean shutdown)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def kill(self) -> None:
        """Kill the server's main process (SIGKILL) and wait until its processes are gone."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # backends notice their postmaster died and exit
            busy = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True).stdout.strip()
            try:
                os.kill(pid, 0)
                alive = True
            except OSError:
                alive = False
            if not busy and not alive:
                break
            time.sleep(0.1)

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run one statement as the superuser over the socket; returns psql's output."""
        return self._run(
            "psql", "-h", str(self.folder), "-p", str(self.port), "-U", "postgres", "-d", dbname, "-v",
            "ON_ERROR_STOP=1", "-tAc", statement,
        ).stdout

    def url(self, dbname: str, user: str = USER, password: str = PASSWORD) -> str:
        """A TCP URL of ``dbname``."""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database owned by ``mvector``; returns its URL."""
        self._databases += 1
        name = f"mv_test_{self._databases}"
        self.sql(f"CREATE DATABASE {name} OWNER {USER}")
        return self.url(name)

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def start_server() -> PostgresServer:
    """A running server with the role ``mvector`` (password :data:`PASSWORD`), or :class:`PostgresUnavailable`."""
    server = PostgresServer()
    try:
        server.init()
        server.start()
        server.sql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as err:
        server.close()
        raise PostgresUnavailable(str(err)) from None
    return server
