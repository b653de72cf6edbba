"""How to talk to each kind of target: one module per kind (mysql, redis, volumes)."""
