"""The pure core: pack specs and their validation, Python version choice, the content hash and
Dockerfile rendering. Nothing in this package imports the Docker SDK or talks to an engine, so all
of it is deterministic and unit-tested without one (tests/unit/test_core_is_pure.py checks)."""
