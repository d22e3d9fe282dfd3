"""`python -m app` is the `mirrorpool` command."""

from app.cli import main

raise SystemExit(main())
