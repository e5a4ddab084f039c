"""diffmamba: masked-diffusion LMs on a bidirectional Mamba-3 trunk, with an AR mode on the same layers."""
__version__ = "0.1.0"
