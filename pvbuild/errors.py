"""The exceptions pvbuild raises for problems a user can fix."""


class PvbuildError(Exception):
    """A problem with input, configuration or state that the message explains how to fix."""


class ConfigError(PvbuildError):
    """The configuration is invalid; the message names the file and key."""


class PluginError(PvbuildError):
    """A plugin could not be loaded or registered something invalid."""


class StateError(PvbuildError):
    """The build state (records under the artifacts directory) is unreadable or corrupt."""
