"""`python -m runner` is the same as the `ductape-runner` command."""

from runner.cli import main

raise SystemExit(main())
