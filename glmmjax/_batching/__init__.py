"""Many models at once: ``fit_many`` and its batch-specialized solvers."""
