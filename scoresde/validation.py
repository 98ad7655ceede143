"""The one check of settings every module uses: a ValueError naming the value and what is allowed."""


def require(condition: bool, message: str) -> None:
    """Raises ValueError(message) unless condition holds: settings are checked at construction."""
    if not condition:
        raise ValueError(message)
