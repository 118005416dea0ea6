"""OncoPlan: AI treatment planning on MONAI Bundle and MONAI Deploy (research use only)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("oncoplan")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "dev"
