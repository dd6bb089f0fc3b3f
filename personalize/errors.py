"""One base class for the errors users cause (bad paths, files, keys); the CLI prints them and exits 2."""


class PersonalizeError(ValueError):
    """Bad input: the message names what was wrong and what was expected."""
