"""Runs the real ``baton server`` (binary from ``BATON_BIN``) on a free 127.0.0.1 port over a
temporary data folder, for the tests of the Python client.

A server is started once announced "baton listening on" (read from its stderr, bounded by
``START_TIMEOUT``) and killed at the end; a port taken meanwhile is retried on another.
Every test uses lock names of its own, so tests share one server per module.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

#: How long a server may take to start listening (generous: the machine is shared).
START_TIMEOUT = 30.0

#: Lines of the server's stderr kept for failure messages.
LOG_LINES_KEPT = 200


def baton_bin() -> str:
    path = os.environ.get("BATON_BIN")
    if not path:
        pytest.skip("BATON_BIN is not set (the cargo test python_client sets it)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"BATON_BIN={path} is not an executable")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A running ``baton server`` process."""

    def __init__(self, args: List[str], data_dir: Optional[str] = None,
                 scheme: str = "http", env: Optional[dict] = None):
        self.args = args
        self.scheme = scheme
        self.env = env
        self._owns_data_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="baton-py-test-")
        self.log: List[str] = []
        self.process: Optional[subprocess.Popen] = None
        self.port = 0
        for _ in range(5):
            self.port = free_port()
            if self._start():
                return
        raise RuntimeError("baton server did not start:\n" + self.log_text())

    @property
    def url(self) -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}"

    def _start(self) -> bool:
        command = [baton_bin(), "server", "--listen", f"127.0.0.1:{self.port}",
                   "--data-dir", self.data_dir, *self.args]
        environment = dict(os.environ, **(self.env or {}))
        for variable in ("BATON_URL", "BATON_API_KEY", "BATON_CA_FILE", "BATON_LISTEN",
                         "BATON_DATA_DIR", "BATON_KEYS_FILE"):
            environment.pop(variable, None)
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env=environment, text=True)
        listening = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line.rstrip("\n"))
                del self.log[:-LOG_LINES_KEPT]
                if "baton listening on" in line:
                    listening.set()

        threading.Thread(target=read, daemon=True).start()
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if listening.wait(0.05):
                return True
            if self.process.poll() is not None:
                return False
        self.stop()
        raise RuntimeError("baton server did not listen in time:\n" + self.log_text())

    def log_text(self) -> str:
        return "\n".join(self.log[-50:])

    def kill(self) -> None:
        """Ends the process at once (SIGKILL), keeping its data folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One server for the module's tests, with a short lock-delay and a long ticket lapse (so
    only a DELETE, never the lapse, can empty a queue within a test's bounds)."""
    started = Server(["--lock-delay", "200ms", "--ticket-lapse", "60s"])
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Starts servers of a test's own; all are stopped after it."""
    started: List[Server] = []

    def start(args: Optional[List[str]] = None, **kwargs) -> Server:
        one = Server(args or [], **kwargs)
        started.append(one)
        return one

    try:
        yield start
    finally:
        for one in started:
            one.stop()


@pytest.fixture
def name() -> str:
    """A lock name no other test uses."""
    return f"py-{uuid.uuid4().hex[:12]}"


def eventually(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Polls ``check`` every 20 ms until it is true, failing after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
