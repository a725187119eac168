"""The smolmachines backend: the agent in a microVM, its guard in a sidecar bundle on Docker (SPEC B4, C3)."""
