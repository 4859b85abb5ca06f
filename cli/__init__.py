"""The application layer: scene files, video I/O, the fit pipeline and the ``dreamcloth`` commands."""
