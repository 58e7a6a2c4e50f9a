"""One BLAS thread per process: import before numpy in entry scripts whose ranks or threads are parallel."""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
