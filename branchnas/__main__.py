"""``python -m branchnas`` is the ``branchnas`` command."""

from .cli import main

raise SystemExit(main())
