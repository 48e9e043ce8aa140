"""The ``modelyard`` command line: ``serve`` and ``plan``."""
