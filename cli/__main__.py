"""``python -m cli``: the same as the ``approval-flow`` console script."""

from cli.main import main

main()
