"""The manager: keeps each pool's workers matched to its backlog, within every safety limit.

loop.py runs the cycle (observe -> decide -> act -> record) and holds the order; the other
modules are its parts, each readable alone (see loop.py's docstring for the map).
"""
