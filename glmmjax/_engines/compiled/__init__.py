"""The compiled engine: JAX programs (jit, vmap, exact gradients)."""
