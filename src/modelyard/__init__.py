"""modelyard: plan where every model goes across a machine's devices, then serve them all."""

__version__ = "0.1.0"
