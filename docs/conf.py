"""Sphinx configuration of cadagrad's documentation.

Build with ``bash tools/build_docs.sh`` (HTML and doctests, warnings as errors). The API pages import
this checkout's cadagrad, which this file puts first on ``sys.path``: its compiled kernels must be built
here (``pip install -e ".[docs,torch]"`` or ``python setup.py build_ext --inplace``), and torch must be
installed for the pages of ``cadagrad.torch``. The demo's figures are generated here, at build time, by
``python -m cadagrad demo``; matplotlib draws them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# This checkout wins over whatever else is installed; the demo's subprocess gets the same path.
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

try:
    import cadagrad  # noqa: E402  (after the path set-up above)
except ImportError as exc:
    raise RuntimeError(
        f"cannot import cadagrad from {ROOT} ({exc}): build its kernels first, with "
        "pip install -e '.[docs,torch]' or python setup.py build_ext --inplace"
    ) from exc

try:
    import torch  # noqa: F401,E402
except ImportError:
    raise RuntimeError(
        "the API pages of cadagrad.torch import torch, which is not installed: pip install -e '.[docs,torch]'"
    ) from None

# -- Project ----------------------------------------------------------------------------------------

project = "cadagrad"
author = "the cadagrad authors"
copyright = "the cadagrad authors"
_version_file = (ROOT / "cadagrad" / "_version.py").read_text()
release = re.search(r'__version__\s*=\s*"([^"]+)"', _version_file).group(1)
version = ".".join(release.split(".")[:2])
if cadagrad.__version__ != release:
    raise RuntimeError(
        f"the imported cadagrad ({cadagrad.__file__}) is version {cadagrad.__version__}, this checkout is "
        f"{release}: build the extensions in place (python setup.py build_ext --inplace) or reinstall"
    )

# -- Extensions -------------------------------------------------------------------------------------
# No intersphinx: its inventories come from the network, and the docs must build offline.

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
]

autodoc_typehints = "none"            # numpydoc's Parameters sections say it, in words
autodoc_member_order = "bysource"
numpydoc_show_class_members = False   # members are listed explicitly in api.rst
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Every ``>>>`` example, in the pages and in the docstrings autodoc pulls in, runs under
# ``sphinx-build -b doctest``.
doctest_global_setup = """
import numpy as np
import cadagrad
try:
    import torch
except ImportError:
    torch = None
"""
doctest_test_doctest_blocks = "default"

# -- HTML -------------------------------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"cadagrad {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []
exclude_patterns = ["_build"]
templates_path: list[str] = []

# -- The demo's figures -----------------------------------------------------------------------------

GENERATED = DOCS / "_generated"
DEMO_OUT = GENERATED / "demo"
DEMO_FIGURES = (
    "1_quadratic_paths.png",
    "2_accumulator.png",
    "3_sparse_gradients.png",
    "4_rare_features.png",
    "5_limits.png",
    "6_l1_sparsity.png",
)


def _generate_demo() -> None:
    """Run ``python -m cadagrad demo --out docs/_generated/demo`` and check that it drew every figure.

    First checks that ``DEMO_FIGURES`` is the demo's ``FIGURE_NAMES`` and that docs/demo.rst shows each.
    """
    from cadagrad.demo import FIGURE_NAMES   # no matplotlib needed

    if tuple(FIGURE_NAMES) != DEMO_FIGURES:
        raise RuntimeError(
            f"cadagrad.demo.FIGURE_NAMES is {FIGURE_NAMES}, docs/conf.py expects {DEMO_FIGURES}: update "
            "DEMO_FIGURES and docs/demo.rst"
        )
    page = (DOCS / "demo.rst").read_text()
    unused = [name for name in DEMO_FIGURES if f"_generated/demo/{name}" not in page]
    if unused:
        raise RuntimeError(f"docs/demo.rst shows none of {unused}: add them to the page")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "the docs need matplotlib to draw the demo's figures: pip install -e '.[docs]'"
        ) from None
    DEMO_OUT.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MPLBACKEND="Agg")
    done = subprocess.run(
        [sys.executable, "-m", "cadagrad", "demo", "--out", str(DEMO_OUT)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"python -m cadagrad demo failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    missing = [name for name in DEMO_FIGURES if not (DEMO_OUT / name).is_file()]
    if missing:
        made = sorted(p.name for p in DEMO_OUT.glob("*.png"))
        raise RuntimeError(
            f"python -m cadagrad demo wrote {made}, not {missing}: update DEMO_FIGURES in docs/conf.py "
            "and docs/demo.rst"
        )


_generate_demo()
