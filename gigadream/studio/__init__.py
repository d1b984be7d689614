"""The studio: a persistent job queue (``db``), the scheduler that runs each job as a
``gigadream run`` child process (``runner``), the web page and JSON API over both
(``server``), and what turns a job description into queued rows (``jobs``: presets, settings,
sweeps, ``jobs.yaml``)."""
