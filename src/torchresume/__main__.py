"""``python -m torchresume``: the command line."""

from torchresume.cli.main import main

raise SystemExit(main())
