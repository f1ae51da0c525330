"""Inference on fitted models: ddf, profiles, anova, bootstrap, simulation, diagnostics."""
