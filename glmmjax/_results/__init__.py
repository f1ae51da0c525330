"""Fitted results: what users see and call after a fit, and how it is displayed."""
