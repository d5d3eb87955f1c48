"""Whether this process is a Jupyter (or Colab) kernel, where output is HTML and stderr is not a terminal."""

from __future__ import annotations

import sys


def in_notebook() -> bool:
    if "IPython" not in sys.modules:  # never import IPython just to find out
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")
