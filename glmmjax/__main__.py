"""``python -m glmmjax``: the same as the ``glmmjax`` command."""

from ._cli import main

raise SystemExit(main())
