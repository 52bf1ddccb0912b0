"""llbgen's own buildkitd, used when no daemon address is configured.

It runs from ``$LLBGEN_BUILDKITD`` or PATH on a private socket, keeps its state in a per-user
directory, outlives the command that started it, and is reused by later commands (a file lock
makes concurrent first runs start only one). ``llbgen daemon status|stop`` manage it.

What it trusts (registries over plain HTTP, insecure entitlements) is the ``[daemon]`` table of
the project configuration (:mod:`llbgen.config`) of the command that starts it: nothing unless
configured. A change takes effect the next time it starts (``llbgen daemon stop``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import attrs

from llbgen.client.connection import Connection, ConnectionError
from llbgen.config import DaemonSettings

START_TIMEOUT = 30.0


@attrs.frozen
class EmbeddedDaemon:
    state_dir: Path
    settings: DaemonSettings = DaemonSettings()

    @classmethod
    def default(cls, settings: DaemonSettings = DaemonSettings()) -> EmbeddedDaemon:
        data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        return cls(data / "llbgen" / "buildkitd", settings)

    def config(self) -> str:
        """buildkitd.toml for :attr:`settings` (the project configuration's ``[daemon]``)."""
        lines = [
            "# Written by llbgen each time it starts its buildkitd, from the [daemon] table of the",
            "# project configuration (llbgen.toml) of the command that started it.",
            f"insecure-entitlements = {_toml_list(self.settings.entitlements)}",
            "",
            "[worker.oci]",
            "  enabled = true",
            "",
            "[worker.containerd]",
            "  enabled = false",
        ]
        for registry in self.settings.insecure_registries:
            lines += ["", f"[registry.{json.dumps(registry)}]", "  http = true", "  insecure = true"]
        return "\n".join(lines) + "\n"

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
        config.write_text(self.config())
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


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"
