"""`python -m runner` is the same as the `ductape-runner` command."""

from runner.cli.main import main

raise SystemExit(main())
