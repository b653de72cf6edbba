"""Pure policies: decisions computed from plain data, no I/O."""
