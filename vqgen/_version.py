"""The version, in a module of its own so that the library can record it without importing the front door."""

__version__ = "0.1.0"
