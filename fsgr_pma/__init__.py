"""FSGR semantically enhanced CLIP features + PMA-Net prototypical-memory caption decoder.

The stage programs are the packages `shared.datasets`, `extract`, `cluster`, `train` and
`evaluate` (`python -m <stage>`, or the console script `fsgr-pma <stage>`); this package holds
the console script and the Python API::

    from fsgr_pma import Captioner
    captioner = Captioner.from_run("runs/demo")
    captioner.caption(["photo.jpg"])
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evaluate.captioner import Caption, Captioner

__all__ = ["Caption", "Captioner", "__version__"]

try:
    __version__ = metadata.version("fsgr-pma")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """Import the API (and with it torch) only when it is used."""
    if name in ("Caption", "Captioner"):
        from evaluate import captioner
        return getattr(captioner, name)
    raise AttributeError(f"module 'fsgr_pma' has no attribute {name!r}")
