"""ReadingRoom: a virtual reading room shared by many imaging sites."""

__version__ = "0.1.0"
