"""`xiehe-backup`: one module per verb; each exposes register(subparsers) and run(args)."""
