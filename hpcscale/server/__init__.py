"""The statestore's HTTP API (app.py and routes/) and the process that serves it (run.py)."""
