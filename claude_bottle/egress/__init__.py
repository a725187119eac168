"""The egress guard: the bottle's only way out. Standard library only; depends on nothing else here."""
