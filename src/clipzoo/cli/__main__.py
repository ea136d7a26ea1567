"""``python -m clipzoo.cli`` runs the ``clipzoo`` command."""
from . import main

main()
