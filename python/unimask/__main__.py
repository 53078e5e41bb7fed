"""``python -m unimask`` is the ``unimask`` command."""

from .cli import main

raise SystemExit(main())
