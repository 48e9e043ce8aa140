"""``python -m modelyard`` is the ``modelyard`` command."""

from modelyard.cli.main import main

raise SystemExit(main())
