"""Private PostgreSQL servers on free ports: a primary and streaming replica for the replica-lag
tests, or a single server for the tests that need PostgreSQL under the default SQLite run.

``start_server()`` runs ``initdb`` and ``pg_ctl`` for one throw-away server. ``start_cluster()``
runs ``initdb`` for a primary, ``pg_basebackup -R`` for a hot standby with
``recovery_min_apply_delay`` (so the lag is real and the same on every run), starts both with
``pg_ctl`` and waits until the replica streams. Servers are stopped and their directories removed
afterwards. PostgreSQL refuses to run as root: as root the commands run as the ``postgres`` user.

Without pytest, so that benchmarks/replica_miss.py can use it too; the fixtures that use it skip
with :func:`unavailable`'s reason when the server binaries are missing
(``apt-get install postgresql``; ``TIERCACHE_TEST_PG_BINDIR`` names another directory).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

#: The replica applies each commit this long after the primary made it.
APPLY_DELAY_MS = 300
_TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_bindir() -> str | None:
    """``TIERCACHE_TEST_PG_BINDIR``, else the newest /usr/lib/postgresql/*/bin, else the PATH."""
    configured = os.environ.get("TIERCACHE_TEST_PG_BINDIR")
    candidates = [configured] if configured else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
    initdb = shutil.which("initdb")
    if initdb and not configured:
        candidates.append(str(Path(initdb).parent))
    for directory in candidates:
        if all(os.access(os.path.join(directory, tool), os.X_OK) for tool in _TOOLS):
            return directory
    return None


def unavailable() -> str | None:
    """Why no private server can be started here (None when one can)."""
    if find_bindir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) not found: "
            "apt-get install postgresql, or set TIERCACHE_TEST_PG_BINDIR"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
    return None


@dataclass(frozen=True)
class Server:
    """A single private server; it trusts local connections as ``postgres``."""

    host: str
    port: int

    def env(self) -> dict[str, str]:
        """What tests/settings.py reads to run the suite on this server."""
        return {
            "TIERCACHE_TEST_DATABASE": "postgres",
            "TIERCACHE_TEST_POSTGRES_HOST": self.host,
            "TIERCACHE_TEST_POSTGRES_PORT": str(self.port),
            "TIERCACHE_TEST_POSTGRES_USER": "postgres",
            "TIERCACHE_TEST_POSTGRES_NAME": "tiercache",
        }


@dataclass(frozen=True)
class Cluster:
    """Where the two servers listen; both trust local connections as ``postgres``."""

    host: str
    primary_port: int
    replica_port: int
    apply_delay_ms: int

    def env(self) -> dict[str, str]:
        """What tests/settings_replica.py reads."""
        return {
            "TIERCACHE_TEST_PRIMARY_PORT": str(self.primary_port),
            "TIERCACHE_TEST_REPLICA_PORT": str(self.replica_port),
        }


class _Runner:
    """Runs the PostgreSQL tools, as ``postgres`` when this process is root."""

    def __init__(self, bindir: str, workdir: Path) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            account = pwd.getpwnam(self.user)
            os.chown(workdir, account.pw_uid, account.pw_gid)

    def __call__(self, tool: str, *args: str) -> None:
        command = [os.path.join(self.bindir, tool), *args]
        result = subprocess.run(
            command,
            cwd=self.workdir,
            user=self.user,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")

    def log_tail(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text()[-3000:] if path.exists() else ""


def _append(path: Path, lines: list[str]) -> None:
    with path.open("a") as conf:
        conf.write("\n".join(["", *lines, ""]))


def _wait_for_streaming(host: str, port: int, timeout: float = 60) -> None:
    """Until the replica accepts connections, is in recovery and has a WAL receiver."""
    import psycopg

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(
                host=host, port=port, user="postgres", dbname="postgres", connect_timeout=2
            ) as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_wal_receiver "
                    "WHERE status = 'streaming')"
                ).fetchone()
                if row == (True, 1):
                    return
        except psycopg.OperationalError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"the replica did not start streaming in {timeout} s ({last})")


def _start_primary(run: _Runner, host: str, port: int, started: list[Path]) -> None:
    primary = run.workdir / "primary"
    run("initdb", "-D", str(primary), "-U", "postgres", "--auth=trust", "-E", "UTF8",
        "--no-sync")  # fmt: skip
    _append(
        primary / "postgresql.conf",
        [
            f"port = {port}",
            f"listen_addresses = '{host}'",
            f"unix_socket_directories = '{run.workdir}'",
            "wal_level = replica",
            "max_wal_senders = 4",
            "fsync = off",  # a throw-away cluster: speed over durability
            "full_page_writes = off",
        ],
    )
    run("pg_ctl", "-D", str(primary), "-l", str(run.workdir / "primary.log"), "-w", "start")
    started.append(primary)


@contextmanager
def start_server(bindir: str) -> Iterator[Server]:
    """One throw-away server, stopped and removed on exit."""
    host, port = "127.0.0.1", free_port()
    workdir = Path(tempfile.mkdtemp(prefix="tiercache-pg-"))
    run = _Runner(bindir, workdir)
    started: list[Path] = []
    try:
        _start_primary(run, host, port, started)
    except RuntimeError as exc:
        _stop(run, started, workdir)
        raise RuntimeError(f"{exc}\nprimary.log:\n{run.log_tail('primary.log')}") from None
    try:
        yield Server(host, port)
    finally:
        _stop(run, started, workdir)


@contextmanager
def start_cluster(bindir: str, apply_delay_ms: int = APPLY_DELAY_MS) -> Iterator[Cluster]:
    """A primary and a delayed streaming replica, stopped and removed on exit."""
    host = "127.0.0.1"
    workdir = Path(tempfile.mkdtemp(prefix="tiercache-pg-"))
    run = _Runner(bindir, workdir)
    replica = workdir / "replica"
    primary_port, replica_port = free_port(), free_port()
    started: list[Path] = []
    try:
        _start_primary(run, host, primary_port, started)
        run("pg_basebackup", "-h", host, "-p", str(primary_port), "-U", "postgres",
            "-D", str(replica), "-R", "-X", "stream", "-c", "fast", "--no-sync")  # fmt: skip
        _append(
            replica / "postgresql.conf",
            [
                f"port = {replica_port}",
                "hot_standby = on",
                f"recovery_min_apply_delay = '{apply_delay_ms}ms'",
            ],
        )
        run("pg_ctl", "-D", str(replica), "-l", str(workdir / "replica.log"), "-w", "start")
        started.append(replica)
        _wait_for_streaming(host, replica_port)
    except RuntimeError as exc:
        logs = "\n".join(f"{n}:\n{run.log_tail(n)}" for n in ("primary.log", "replica.log"))
        _stop(run, started, workdir)
        raise RuntimeError(f"{exc}\n{logs}") from None
    try:
        yield Cluster(host, primary_port, replica_port, apply_delay_ms)
    finally:
        _stop(run, started, workdir)


def _stop(run: _Runner, started: list[Path], workdir: Path) -> None:
    for datadir in reversed(started):
        with suppress(RuntimeError, subprocess.TimeoutExpired):
            run("pg_ctl", "-D", str(datadir), "-m", "immediate", "-w", "stop")
    shutil.rmtree(workdir, ignore_errors=True)
