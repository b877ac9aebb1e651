"""attune-containers: run Attune pack actions in isolated, reproducible container images."""

__version__ = "0.1.0"
