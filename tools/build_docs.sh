#!/usr/bin/env bash
# Build the documentation with warnings as errors, then run every example in it as a doctest.
#
# Installs nothing: run `pip install -e ".[docs,torch]"` first (Sphinx, numpydoc, the PyData theme and
# matplotlib, which draws the demo's figures during the build; torch for the cadagrad.torch pages).
# cadagrad's compiled kernels must be built in this checkout: the editable install does it, or
# `python setup.py build_ext --inplace`. docs/conf.py puts this checkout first on sys.path, so the pages
# always describe this checkout's code, never another copy that happens to be installed.
#
# Output: docs/_build/html (the site) and docs/_build/doctest (the doctest report); the demo's figures
# are generated into docs/_generated/. Both are ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m sphinx -W --keep-going -b html docs docs/_build/html
python -m sphinx -W -b doctest docs docs/_build/doctest
