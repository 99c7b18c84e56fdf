"""The node's private run folder (mode 0700): where each worker's own sockets are.

    RUN_DIR/wI.sock         worker I's HTTP server, for the node's other processes
    RUN_DIR/wI.debug.sock   worker I's debug socket, for the node's debug socket

A restarted worker keeps its number, so its paths stay the same.
"""

from __future__ import annotations

from pathlib import Path


def private_http_path(run_dir: str, index: int) -> str:
    """Where worker `index` serves the node's and its siblings' requests."""
    return str(Path(run_dir) / f"w{index}.sock")


def private_debug_path(run_dir: str, index: int) -> str:
    """Where worker `index` runs its own debug socket (the node's debug socket goes there)."""
    return str(Path(run_dir) / f"w{index}.debug.sock")
