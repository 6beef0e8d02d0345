"""``python -m captum_sfam.app.bench``: the benchmark from the command line."""

from .command import main

raise SystemExit(main())
