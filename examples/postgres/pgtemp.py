"""A throwaway PostgreSQL: initdb into a temporary directory, pg_ctl start on a free
127.0.0.1 port with the unix socket in that directory, and everything stopped and
removed on exit (also on an exception, Ctrl-C or SIGTERM). Uses the server binaries of
Debian's `postgresql` package (`initdb` on PATH, else /usr/lib/postgresql/*/bin).
Run as root (as CI is), the server runs as the `postgres` user the package creates,
since PostgreSQL refuses to run as root."""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No initdb here (Debian: apt-get install postgresql)."""


def find_bindir() -> Path:
    """The directory with initdb, pg_ctl and postgres: PATH first (resolving a
    symlink such as /usr/local/bin/initdb), else the newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if dirs:
        return Path(dirs[-1]).parent
    raise PostgresUnavailable("initdb not found on PATH nor under /usr/lib/postgresql/*/bin "
                              "(Debian: apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """``with TempPostgres() as pg: psycopg.connect(pg.conninfo)``."""

    def __init__(self, log=None):
        self.bindir = find_bindir()
        self.log = log or (lambda m: None)
        self.dir: Path | None = None
        self.port = 0
        self.user = None  # the OS user the server runs as, when we are root
        self._started = False

    @property
    def conninfo(self) -> str:
        return f"host={self.dir} port={self.port} user=postgres dbname=postgres"

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("check", True)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        if self.user is not None:
            kw["user"], kw["group"], kw["extra_groups"] = self.user.pw_uid, self.user.pw_gid, []
        try:
            return subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.dir, **kw)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"{args[0]} failed ({e.returncode}): {(e.stderr or e.stdout or '').strip()[-2000:]}") from None

    def start(self) -> "TempPostgres":
        self.dir = Path(tempfile.mkdtemp(prefix="embquant-pg-"))
        atexit.register(self.stop)
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no `postgres` user to run the server as "
                                          "(Debian's postgresql package creates it)") from None
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
                  "--locale=C")
        self.port = _free_port()
        # Throwaway: fsync off (nothing here must survive a crash of the machine).
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=128MB")
        self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "server.log"), "-o", opts, "-w", "-t", "60", "start")
        self._started = True
        self.log(f"PostgreSQL ({self.bindir.parent.name}) on 127.0.0.1:{self.port}, socket in {self.dir}")
        return self

    def server_log(self) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace") if self.dir else ""
        except OSError:
            return ""

    def stop(self) -> None:
        if self.dir is None:
            return
        if self._started:
            self._started = False
            try:
                self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "-t", "30", "stop",
                          check=False)
            except Exception:  # noqa: BLE001 - still remove the directory
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> "TempPostgres":
        # SIGTERM (a CI timeout, kill PID) unwinds through __exit__ like Ctrl-C does.
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            try:
                signal.signal(signal.SIGTERM, _raise_exit)
            except ValueError:  # not the main thread
                pass
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)
