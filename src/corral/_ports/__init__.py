"""The ports: the storage protocols, and the plain data types that cross them.

The bottom layer. The backends (``corral._backends``) implement these protocols; the
engine (the writer, ``Database``) and the domains (jobs, progress) call them. A port's
docstrings state what every backend must guarantee. This package imports nothing of
corral but :mod:`corral._exceptions`.

- :mod:`._session`: :class:`Session`, what a writer operation is given.
- :mod:`._jobs`: :class:`JobStore`, the job queue's storage.
- :mod:`._progress`: :class:`ProgressStore`, runs and subtasks.
"""
