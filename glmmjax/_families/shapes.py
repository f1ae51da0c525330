"""The shape parameters some families estimate with their dispersion (Student-t's ν,
Tweedie's power, ordered beta's cutpoints): their starts and the map between their
values and the unconstrained parameters the searches move. Used by the host GLM and
GLMM engines (a GLM fit needs them without loading the GLMM engine)."""

from __future__ import annotations


def shape_starts(family) -> list:
    """The starting values of the shape parameters estimated with the dispersion (none,
    Student-t's ν, Tweedie's p, ordered beta's two cutpoints)."""
    if not getattr(family, "n_shape", 0):
        return []
    if hasattr(family, "shape_starts"):
        return list(family.shape_starts())
    return [family.shape_start()]


def shape_values(family, parameters) -> list:
    """The shapes from their unconstrained outer parameters."""
    if hasattr(family, "shape_values"):
        return list(family.shape_values(parameters))
    return [family.shape_value(parameters[0])]


def shape_parameters(family, values) -> list:
    """The unconstrained outer parameters of the shapes ``values``."""
    if hasattr(family, "shape_parameters"):
        return list(family.shape_parameters(values))
    return [family.shape_parameter(v) for v in values]
