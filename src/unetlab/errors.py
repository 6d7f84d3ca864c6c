"""Errors a user can fix: the CLI prints their message on one line and exits with code 2."""


class UnetlabError(Exception):
    """A problem with the user's input (data, config, run folder), worded as `what: why; fix`."""


class DataError(UnetlabError):
    """A data file or folder is missing, unreadable or inconsistent."""


class ConfigError(UnetlabError):
    """A config key is unknown or a value is out of range."""
