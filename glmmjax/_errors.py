"""Errors about the user's input that every layer raises (defined at the bottom so that
families and the model description can both raise them)."""


class DataError(ValueError):
    """Input data that cannot be used for the requested model."""
