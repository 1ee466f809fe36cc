"""ductape-runner: a declarative job runner daemon for Ductape."""

__version__ = "0.1.0"
