"""The exceptions pvbuild raises for problems a user can fix."""


class PvbuildError(Exception):
    """A problem with input, configuration or state that the message explains how to fix."""


class ConfigError(PvbuildError):
    """The configuration is invalid; the message names the file and key."""


class PluginError(PvbuildError):
    """A plugin could not be loaded or registered something invalid."""


class StateError(PvbuildError):
    """The build state (records under the artifacts directory) is unreadable or corrupt."""


# The optional parts of pvbuild and the extra that installs each (see pyproject.toml).
EXTRAS = {"crawl4ai": "crawl", "openai": "openai", "datasets": "data", "pyarrow": "data", "boto3": "aws",
          "botocore": "aws", "torch": "local", "transformers": "local", "peft": "local", "matplotlib": "local",
          "safetensors": "local"}


def missing_extra(error: ModuleNotFoundError) -> PvbuildError | None:
    """A friendly error for a step whose optional dependency is not installed, or None."""
    module = (error.name or "").split(".")[0]
    if module not in EXTRAS:
        return None
    return PvbuildError(f"this step needs {module}, which is not installed: pip install 'pvbuild[{EXTRAS[module]}]' "
                        "(or '.[all]' from a checkout)")
