"""Response families and links, and their closed-form per-row terms for both engines."""
