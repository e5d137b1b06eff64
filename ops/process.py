"""Starting and stopping child processes by PID (never by name)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """Signal ``process``, wait up to ``timeout`` seconds, then SIGKILL it; return its exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
    return process.returncode


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
