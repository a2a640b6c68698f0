"""The command line: thin commands over ``devflow.app``."""
