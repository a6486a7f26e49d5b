"""Errors that stop the station from starting, shared by the service and the adapters it starts."""


class StartError(RuntimeError):
    """The daemon cannot start (no broker binary for the demo, metrics port taken...)."""
