"""The error an operator can hit while steering an interface."""


class InterfaceError(RuntimeError):
    """An operator-facing failure: says what is wrong and what to do."""
