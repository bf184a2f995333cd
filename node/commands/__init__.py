"""CLI subcommands.  Each module here defines ``register(subparsers)`` and sets
``func`` on its parsers; :mod:`node.cli` discovers the modules by name, so
adding a command never touches a shared file."""
