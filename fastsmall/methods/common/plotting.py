"""What every method's plots share."""
from __future__ import annotations


def integer_xaxis(ax) -> None:
    """Ticks only at whole numbers: generations, epochs and ranks have no fractions."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
