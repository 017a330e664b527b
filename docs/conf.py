"""Sphinx configuration: `pip install -e '.[docs]' && sphinx-build docs docs/_build`."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "sheepdog_drmaa"
author = "The sheepdog_drmaa developers"
extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
exclude_patterns = ["_build"]
