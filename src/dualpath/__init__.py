"""dualpath: dual-path next-vector generation.

A latent vector model (LVM) writes text as a sequence of concept vectors; a trained two-tower
retriever searches a bank of real concepts; at each step a decider SNAPs to a bank concept,
BLENDs with it, or keeps the NOVEL generated vector.
"""

from importlib.metadata import PackageNotFoundError, version

from dualpath.errors import DualPathError

try:
    __version__ = version("dualpath")  # pyproject.toml's, so the package states one version
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["DualPathError", "__version__"]
