"""Word when a bottle needs someone (issue 24): the operator's settings, a bottle's events, and who hears
of them (signed webhooks, the desktop). One watcher process per running bottle sends them (`watch.py`),
so nothing depends on a terminal being attached and nothing the bottle does waits on a receiver."""
