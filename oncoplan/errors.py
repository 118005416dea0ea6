"""The one exception type that means "the user's input is wrong": the CLI prints it as one line."""


class InputError(Exception):
    """Bad input named by the message; the command exits non-zero and writes nothing."""
