"""`python -m clinstream` = the `clinstream` command."""

from clinstream.cli import main

raise SystemExit(main())
