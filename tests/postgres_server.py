"""A throwaway PostgreSQL server for the tests: temporary data directory, 127.0.0.1, a free port.

``tests/run.py`` starts one when ``SESSION_STORE_POSTGRES_DSN`` is not set and PostgreSQL's
``initdb`` and ``pg_ctl`` are installed (on PATH or under ``/usr/lib/postgresql/*/bin``),
passes its DSN to pytest, and stops it afterwards. As root, the server runs as the
``postgres`` user (PostgreSQL refuses to run as root). By hand::

    python3 tests/postgres_server.py     # prints the DSN, stops on Enter
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass
class Server:
    """A running server: its DSN, and how to stop it."""

    dsn: str
    data_dir: str
    pg_ctl: str
    user: str | None

    def stop(self) -> None:
        """Stop the server at once and remove its data directory."""
        subprocess.run([self.pg_ctl, "-D", self.data_dir, "-m", "immediate", "-w", "stop"], user=self.user,
                       capture_output=True, check=False)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def find_binaries() -> tuple[str, str] | None:
    """``(initdb, pg_ctl)``, or ``None`` when PostgreSQL is not installed."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(f"{bindir}/initdb") and os.path.exists(f"{bindir}/pg_ctl"):
            return f"{bindir}/initdb", f"{bindir}/pg_ctl"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start() -> Server:
    """Start a server; ``RuntimeError`` (with PostgreSQL's own log) when it cannot."""
    found = find_binaries()
    if found is None:
        raise RuntimeError("PostgreSQL is not installed (no initdb and pg_ctl found)")
    initdb, pg_ctl = found
    user = "postgres" if os.geteuid() == 0 else None
    data_dir = tempfile.mkdtemp(prefix="session-store-pg-")
    if user is not None:
        shutil.chown(data_dir, user)
    port = free_port()
    try:
        subprocess.run([initdb, "-D", data_dir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
                       user=user, capture_output=True, check=True, text=True)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data_dir} -c max_connections=200"
        subprocess.run([pg_ctl, "-D", data_dir, "-o", options, "-l", f"{data_dir}/server.log", "-w", "-t", "60",
                        "start"], user=user, capture_output=True, check=True, text=True)
    except subprocess.CalledProcessError as e:
        log = ""
        if os.path.exists(f"{data_dir}/server.log"):
            with open(f"{data_dir}/server.log") as f:
                log = f.read()[-2000:]
        shutil.rmtree(data_dir, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {e.stderr or e.stdout}\n{log}") from e
    return Server(dsn=f"host=127.0.0.1 port={port} user=postgres dbname=postgres", data_dir=data_dir,
                  pg_ctl=pg_ctl, user=user)


if __name__ == "__main__":
    server = start()
    print(server.dsn, flush=True)
    try:
        input("running; press Enter to stop\n")
    finally:
        server.stop()
