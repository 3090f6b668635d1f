"""The ``corral`` command line (click).

``corral progress`` shows runs and subtasks; ``corral jobs ...`` reads and changes the
job queue (``corral jobs --help`` lists its subcommands); ``corral worker`` runs a job
processor. They read the database, so they show work that runs in another process or
on another host, from another terminal. Needs the ``cli`` extra:
``pip install 'corral[cli]'``.
"""

from . import _jobs, _progress, _worker  # noqa: F401 - each registers its commands
from ._common import cli

__all__ = ["cli"]
