"""The debug socket: live actor state for engineers (see docs/debug-socket.md).

    protocol.py     JSON-lines codec, command schema, errors (pure)
    listener.py     DebugListener: Unix socket (+ TCP with a token), connections, limits, watch
                    streaming, for any `CommandExecutor`
    server.py       DebugServer: the executor that runs the commands in this process
    socket_file.py  the socket file: mode 0600, a stale one replaced, a live one refused
    commands.py     what each command reads or does (snapshots, handles, psutil)
    watch.py        DebugEvents: the event fan-out, with the outbox tap for the call edge
    poller.py       TreePoller: watch events from snapshot differences
    monitor.py      LoopMonitor: event-loop lag and process CPU

The client is `mediaserver/inspect.py` (`mediaserver inspect ...`).
"""

from mediaserver.debug.server import DebugServer, debug_server
from mediaserver.debug.watch import DebugEvents

__all__ = ["DebugEvents", "DebugServer", "debug_server"]
