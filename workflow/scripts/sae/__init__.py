"""Parallel sparse autoencoder: the math and I/O behind the Snakemake workflow.

Modules: ``config`` (schema validation), ``images`` (loading, whitening),
``patches`` (sampling, normalization), ``objective`` (Ng's cost and gradient),
``parallel`` (everything MPI), ``train`` (the L-BFGS driver), ``h5io`` (HDF5
layout, atomic writes), ``filters`` (the picture of the learned features).
"""


class SaeError(Exception):
    """A problem with the user's config or data, reported as one line."""
