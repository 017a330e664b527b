"""Sphinx configuration: `pip install -e '.[docs]' && sphinx-build docs docs/_build`."""
import os
import sys

# The package documented is the one beside this directory, whatever is installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import sheepdog_drmaa  # noqa: E402

project = "sheepdog_drmaa"
author = "The sheepdog_drmaa developers"
release = sheepdog_drmaa.__version__
version = release
extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
exclude_patterns = ["_build"]
# Keep "--mem" and quotes as typed: docstrings name command-line options.
smartquotes = False
