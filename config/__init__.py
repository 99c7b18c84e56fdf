"""Settings of the server: pydantic models only, no imports of `actors` or `mediaserver`."""

from config.loading import LoadedSettings, SettingsError, load_settings
from config.settings import Settings

__all__ = ["LoadedSettings", "Settings", "SettingsError", "load_settings"]
