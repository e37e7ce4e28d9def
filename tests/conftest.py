"""Shared pytest fixtures: each part lives in its own module, gathered here."""

from image_fixtures import *  # noqa: F403
from registry_fixtures import *  # noqa: F403
