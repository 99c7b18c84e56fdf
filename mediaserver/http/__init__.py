"""HTTP routes of the one port the server listens on (FastAPI on uvicorn)."""
