"""`tinyfleet doctor`: what is installed and whether a private broker can start."""


def doctor() -> None:
    """Report tool versions and whether a private Mosquitto starts on a free loopback port."""
    raise NotImplementedError
