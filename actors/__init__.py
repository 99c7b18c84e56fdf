"""Call logic on pykka: plain synchronous Python, no I/O imports (see docs/architecture.md)."""
