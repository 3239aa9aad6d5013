"""The command line, ``paragrad``: the parser (``parser``, ``options``) and the commands
(``commands``), thin over the Python API."""

from paragrad.cli.commands import main

__all__ = ["main"]
