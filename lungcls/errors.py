"""The base of lungcls's own errors: the CLI turns them into a message and an exit status
without importing every stage (and its heavy libraries) up front."""


class LungclsError(RuntimeError):
    """A stage cannot run on its input; the message says why and what to do."""
