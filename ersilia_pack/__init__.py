"""ersilia-pack: turn an Ersilia model directory into a fast, safe FastAPI service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ersilia-pack")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
