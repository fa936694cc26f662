"""Command-line entry points: thin layers over the library, one config dataclass each."""
