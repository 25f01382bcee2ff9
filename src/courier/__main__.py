"""`python -m courier` is the same as the `courier` command."""

from courier.cli import main

raise SystemExit(main())
