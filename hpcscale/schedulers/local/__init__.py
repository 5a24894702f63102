"""A scheduler on this machine (laptops, demos, tests): the adapter, the per-element
supervisor, and the files they share (records)."""
