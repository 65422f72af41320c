"""One module per library: its jobs (importable by its worker processes) and its :class:`Peer`."""
