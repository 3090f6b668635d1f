"""The durable job processor; its public names are re-exported by :mod:`corral.jobs`."""
