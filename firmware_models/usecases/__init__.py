"""Use cases: sine, characters, keywords, presence."""
