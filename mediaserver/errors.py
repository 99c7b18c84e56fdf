"""Errors of the edge.

EdgeError
├── StartupError        the server cannot start as configured (exit code 2)
├── ServerFailed        the server stopped after a failure it could not recover from (exit 1)
├── ProtocolViolation   malformed wire data from a peer
└── SignalingError      a signaling request that cannot be honoured
"""


class EdgeError(Exception):
    """Root of the edge's errors."""


class StartupError(EdgeError):
    """The server cannot start as configured; the message says what to do."""


class ServerFailed(EdgeError):
    """The server stopped on its own after a failure it could not recover from; the message
    says why in one line."""


class EngineUnavailable(EdgeError):
    """An agent names an engine this server cannot provide; the message says which and why."""


class ProtocolViolation(EdgeError):
    """A peer sent data that breaks the wire protocol."""


class SignalingError(EdgeError):
    """A signaling request that cannot be honoured."""
