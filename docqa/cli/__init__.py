"""The command-line interface: parse, call the library, print."""

from .main import main

__all__ = ["main"]
