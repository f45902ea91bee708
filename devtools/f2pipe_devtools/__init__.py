"""f2pipe development tooling: the local stack, the server harness, benchmarks, test kits.

A workspace package of its own, installed by `make setup` (the dev group) and never by the
service image.
"""
