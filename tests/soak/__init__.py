"""The chaos soak: one engine (engine.py, checks.py) for the short test and bench/soak.py."""
