"""dualpath: dual-path next-vector generation.

A latent vector model (LVM) writes text as a sequence of concept vectors; a trained two-tower
retriever searches a bank of real concepts; at each step a decider SNAPs to a bank concept,
BLENDs with it, or keeps the NOVEL generated vector.
"""

from dualpath.errors import DualPathError

__version__ = "0.1.0"
__all__ = ["DualPathError", "__version__"]
