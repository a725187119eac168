"""The work layer: what every verb does, as plain functions against the BottleBackend ABC. The CLI parses
and prints; everything else happens here. Import a module for what it does (start, run, stop, requests,
upkeep, inventory): nothing is imported here, so a light verb (`ls`) pays for no other."""
