"""The Bayesian path (NumPyro): model, priors, sampler, results, diagnostics."""
