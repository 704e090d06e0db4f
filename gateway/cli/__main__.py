"""``python -m gateway.cli``: the ``llmaas`` command line."""

from gateway.cli import main

main()
