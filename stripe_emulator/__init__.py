"""A local, stateful Stripe emulator speaking Stripe's v1 wire format (development and tests only)."""

from .app import create_app
from .config import Config
from .state import EmulatorClock

__all__ = ["Config", "EmulatorClock", "create_app"]
