"""Services of the operator tests only (their own package, so other tests never see them)."""
