"""The egress guard: the bottle's only way out. Standard library only; depends on nothing else here."""

HEALTH_PATH = "/__bottle/health"  # the guard's readiness endpoint (origin-form, never proxied)
