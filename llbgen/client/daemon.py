"""llbgen's own buildkitd, used when no daemon address is configured.

It runs from ``$LLBGEN_BUILDKITD`` or PATH on a private socket, keeps its state in a per-user
directory, outlives the command that started it, and is reused by later commands (a file lock
makes concurrent first runs start only one). ``llbgen daemon status|stop`` manage it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import attrs

from llbgen.client.connection import Connection, ConnectionError

START_TIMEOUT = 30.0

_CONFIG = """\
# Written by llbgen for its own buildkitd; edit freely, llbgen does not overwrite it.
insecure-entitlements = ["network.host"]

[worker.oci]
  enabled = true

[worker.containerd]
  enabled = false

[registry."127.0.0.1:5000"]
  http = true
  insecure = true

[registry."localhost:5000"]
  http = true
  insecure = true
"""


@attrs.frozen
class EmbeddedDaemon:
    state_dir: Path

    @classmethod
    def default(cls) -> EmbeddedDaemon:
        data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        return cls(data / "llbgen" / "buildkitd")

    @property
    def address(self) -> str:
        return f"unix://{self.state_dir / 'buildkitd.sock'}"

    @property
    def log(self) -> Path:
        return self.state_dir / "buildkitd.log"

    @property
    def _pid_file(self) -> Path:
        return self.state_dir / "buildkitd.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def is_answering(self) -> bool:
        if self.pid() is None:
            return False
        conn = Connection(self.address)
        try:
            conn.probe(timeout=2)
            return True
        except ConnectionError:
            return False
        finally:
            conn.close()

    def ensure_running(self) -> str:
        """The address of a running embedded daemon, starting it if needed."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.state_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.is_answering():
                self._start()
        return self.address

    def _start(self) -> None:
        exe = os.environ.get("LLBGEN_BUILDKITD") or shutil.which("buildkitd")
        if exe is None:
            raise ConnectionError(
                "no BuildKit daemon address is set and no buildkitd was found to start one: install "
                "BuildKit v0.32.2 (scripts/install-buildkit builds it with Go), set LLBGEN_BUILDKITD, "
                "or point --addr/BUILDKIT_HOST at a running daemon"
            )
        config = self.state_dir / "buildkitd.toml"
        if not config.exists():
            config.write_text(_CONFIG)
        socket = self.state_dir / "buildkitd.sock"
        socket.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                [exe, "--addr", self.address, "--root", str(self.state_dir / "root"), "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # keeps running after llbgen exits, and ignores its Ctrl-C
            )
        self._pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConnectionError(
                    f"llbgen's buildkitd exited with code {proc.returncode} while starting; see {self.log}"
                )
            if self.is_answering():
                return
            time.sleep(0.2)
        raise ConnectionError(
            f"llbgen's buildkitd did not answer within {START_TIMEOUT:.0f}s; see {self.log}"
        )

    def stop(self, timeout: float = 20.0) -> bool:
        """Stops the daemon; False when none was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.1)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
        self._pid_file.unlink(missing_ok=True)
        return True
