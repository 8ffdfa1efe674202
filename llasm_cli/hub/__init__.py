"""Models people already have: short names for hub repositories, and ``llasm pull``."""
