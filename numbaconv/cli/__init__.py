"""The ``numbaconv`` command line: :mod:`.main` (the group, ``run``, ``evaluate``, the registry
listings, ``summary``), :mod:`.demos` (the lessons), :mod:`.bench` and :mod:`.errors` (one
``Error: ...`` line, never a traceback)."""

from .main import cli, main

__all__ = ["cli", "main"]
