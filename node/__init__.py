"""CPN node: the daemon and the CLI (all IO lives here; the protocol core is in ``protocol``)."""
