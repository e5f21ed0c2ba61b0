"""cardiostream: a real-time side-car for cardiac imaging."""

__version__ = "0.1.0"
