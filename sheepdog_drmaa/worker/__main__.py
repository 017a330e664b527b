"""``python -m sheepdog_drmaa.worker``, the command every backend starts on an execution node.

Imports only what the package's docstring allows.
"""
from .supervisor import main

if __name__ == "__main__":
    main()
