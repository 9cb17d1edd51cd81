"""A local, stateful Stripe emulator speaking Stripe's v1 wire format (development and tests only)."""

from .app import create_app
from .state import Config, EmulatorClock

__all__ = ["Config", "EmulatorClock", "create_app"]
