"""The application's pipeline: everything the ``dreamcloth`` commands do, without a terminal.

Scene files (``scene``), video I/O (``video_io``) and masks (``masks``); building a simulation and
its renderer from a scene (``simulation``); simulate-and-render (``simulate``); the fit
(``fit``: stages and optimiser; ``rollouts``: its independent rollouts in worker processes;
``fit_video``: the fit with its reports; ``predict``); reports
(``report``, ``export``); shape morphing as an application of the simulator (``morph_control``:
the optimisation; ``morph``: the run and its files); batches of fits on Ray (``batch``); prior
training videos (``training_data``) and the analytic sheet video (``sheet``).

Functions here take paths and configs, return result dataclasses, report progress through
callbacks (``progress``) and raise typed exceptions (``errors``).  The pipeline imports the three
libraries and never a command module; benchmarks import it the same way.  Importing this package
imports nothing heavy (``environment`` must run before torch).
"""
