"""WebSocket signaling for WebRTC callers: contract v1 in docs/signaling.md."""
