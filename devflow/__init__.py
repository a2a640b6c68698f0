"""devflow: runs coding agents through reviewed, reproducible workflows."""

__version__ = "0.1.0"
