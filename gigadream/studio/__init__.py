"""The studio: a persistent job queue (``db``), the scheduler that runs each job as a
``gigadream run`` child process (``runner``), what turns a job description into queued rows
(``jobs``: presets, settings, sweeps, ``jobs.yaml``), and the web app over both: ``server``
(its state and ``serve``), ``pages`` and ``api`` (the routes), ``security`` (who may ask for
what), ``uploads`` (images in), ``settings_form`` (the new-job form)."""
