"""ocifs: mount container images lazily, fetching file bytes by HTTP range requests."""

__version__ = "0.1.0"
