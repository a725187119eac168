"""The host's file system where an agent has written: host paths checked before they are bound, trees
walked and removed by descriptor, archives unpacked by descriptor within budgets, and copy mode's tree."""
