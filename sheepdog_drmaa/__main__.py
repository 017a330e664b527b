"""``python -m sheepdog_drmaa``: the command line."""
import sys

from .cli import main

sys.exit(main())
