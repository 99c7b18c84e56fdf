"""mediaserver: the asyncio edge (signaling, WebRTC, telephony, providers' I/O, CLI, store).

Call logic lives in the `actors` package; settings in `config`. See docs/architecture.md.
"""

__version__ = "0.1.0"
