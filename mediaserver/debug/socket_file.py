"""The debug socket's file: created private (0600), a stale one replaced, a live one refused."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat

from mediaserver.errors import StartupError

logger = logging.getLogger(__name__)


def bind_unix_socket(path: str) -> tuple[socket.socket, int]:
    """A bound (not yet listening) Unix socket at `path` with mode 0600, and its inode.

    Raises:
        StartupError: `path` is a live server's socket, not a socket at all, or cannot be bound.
    """
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StartupError(f"cannot use debug.socket_path {path}: {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(existing.st_mode):
            msg = f"debug.socket_path {path} exists and is not a socket: remove it or pick a path"
            raise StartupError(msg)
        if _is_listening(path):
            msg = (
                f"another server is listening on the debug socket {path}: stop it, or set "
                "another debug.socket_path (MEDIASERVER_DEBUG__SOCKET_PATH)"
            )
            raise StartupError(msg)
        logger.info("= removing the stale debug socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Before listen(): until then a connect is refused, so the file is never usable wider.
        os.chmod(path, 0o600)
        inode = os.stat(path).st_ino
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        raise StartupError(f"cannot create the debug socket {path}: {why}") from None
    sock.setblocking(False)
    return sock, inode


def _is_listening(path: str) -> bool:
    """True if a server accepts connections on the Unix socket `path` (a blocking probe)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        raise StartupError(f"cannot check the debug socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    return True
