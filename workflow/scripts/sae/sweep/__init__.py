"""The scaling sweep: timed training runs → tables, speedup, a performance model, figures.

Data flows one way through its modules:

    records      timed runs (model files) ↔ rows; the CSV and JSON files
    scaling      rows → speedup, efficiency, the runtime table, the loop's breakdown
    model        rows + collectives timings → the fitted performance model, predictions
    plots        all of the above → PNG figures (matplotlib only here)

and, apart from that flow, ``collectives``: the MPI microbenchmark of one evaluation's
Bcast + Reduce whose rows the model reads (the only module here that imports mpi4py).
"""
