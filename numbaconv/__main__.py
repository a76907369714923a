"""``python -m numbaconv``: the same as the ``numbaconv`` command."""

from .cli import main

main()
