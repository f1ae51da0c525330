"""The model description: formula, design, random-effects structure and its covariance, parameters."""
