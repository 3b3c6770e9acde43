"""Repository tools run as ``python -m tools.<name>`` (not installed with the package)."""
