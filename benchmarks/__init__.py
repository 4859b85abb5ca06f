"""Speed and accuracy benchmarks, run by ``dreamcloth bench``.

They drive the libraries and the application's pipeline (``dreamcloth.cli.pipeline``), never a
command module, and write ``Measurement`` rows (``common``); ``suite`` lists the sections.
"""
