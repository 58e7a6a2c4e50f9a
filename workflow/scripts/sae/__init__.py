"""Parallel sparse autoencoder: the math and I/O behind the Snakemake workflow.

Modules, in the order data flows: ``config`` (schema validation), ``images``
(loading, whitening), ``patches`` (sampling, normalization), ``objective`` (Ng's
cost and gradient, exact block sums), ``parallel`` (the training's MPI), ``train``
(the L-BFGS driver), ``filters`` (the picture of the learned features), ``curve``
(the training curve), the subpackage ``sweep`` (the scaling study: records,
scaling, model, collectives, plots), and ``labels`` (what the Snakemake report
states about each output, read from the outputs). Shared: ``h5io`` (HDF5 layout,
atomic writes), ``cli`` (logging, one-line errors), ``one_blas_thread``. On Slurm,
``slurm`` finds the jobs no node can hold before they are submitted. This module owns
SaeError.
"""


class SaeError(Exception):
    """A problem with the user's config or data, reported as one line."""
