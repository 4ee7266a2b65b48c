"""Services that misbehave on purpose, for the chaos suite (tests/chaos)."""
