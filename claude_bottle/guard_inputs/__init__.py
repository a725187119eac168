"""The guard's inputs, prepared on the host once, outside any backend: its policy (manifest + live grants),
credential routes and honeytokens (its secrets file), pipelock's config when pipelock is the engine, and
what the agent is given instead of credentials. A backend only mounts and runs what this produced.

Files live in the state dir's `guard/` (0600, the guard's uid, mounted read-only into the guard alone);
the secrets file exists only while the bottle runs: `drop_secrets` zeroes and removes it at stop, at a
crash and in cleanup.

Modules: `inputs` (prepare_guard, GuardInputs), `credentials`, `files` (light: GuardFiles, grants,
drop_secrets), `pipelock`. Import the one you need: this package imports nothing on its own.
"""
