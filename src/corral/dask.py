"""Dask offload: run CPU work of :func:`corral.map` and :func:`corral.imap` on a Dask cluster.

``async with DaskPool("tcp://scheduler:8786") as pool`` (or ``DaskPool()`` for a
``LocalCluster`` of worker processes), then ``offload=pool``. Needs
``pip install 'corral[dask]'``; importing this module does not import distributed.
"""

from ._dask import DaskPool as DaskPool
from ._dask import DaskPoolStatistics as DaskPoolStatistics
from ._dask import wait_concurrent as wait_concurrent
from ._public import fixup_module_metadata as _fixup_module_metadata

__all__ = ("DaskPool", "DaskPoolStatistics", "wait_concurrent")

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
