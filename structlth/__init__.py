"""structlth: structurally sparse lottery tickets with verified speedups."""

__version__ = "0.1.0"
