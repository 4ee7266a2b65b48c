"""A package whose service cannot be imported: the registry must report it, not crash."""
