"""The host engine: numpy/LAPACK twins of the compiled kernels, nothing to compile."""
