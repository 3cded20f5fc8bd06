"""User-facing errors: each says what was wrong, with which input, and what to do."""


class FieldguideError(Exception):
    """An error caused by the user's input or configuration, reported as one line (CLI exit code 2)."""


class CatalogError(FieldguideError):
    """The catalog as a whole is unusable (missing, empty, wrong columns, bad taxonomy)."""


class ConfigError(FieldguideError):
    """A configuration file or value is invalid."""
