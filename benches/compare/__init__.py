"""Head to head: hauler against the Python job libraries, in one command.

    python -m benches.compare            # the full run (about 30 minutes)
    python -m benches.compare --quick    # small sizes: a smoke check (a few minutes)

It makes its own virtualenv (``.hauler-bench/venv``, git-ignored) with the peers pinned in
``benches/compare/requirements.txt`` and hauler built from this tree (``maturin build
--release``), starts a private Redis and PostgreSQL on loopback, runs every workload on
every library (each measurement in a subprocess with a timeout; a peer that fails is
reported as FAILED with the reason), and writes ``benches/results/compare-<date>.md``, a
PNG chart and the raw JSON next to it. Not part of CI.

Layout: ``__main__`` (the virtualenv and the build), ``harness`` (servers, runs, order),
``one`` (one workload on one peer, in its own process), ``peers/`` (one module per library:
its jobs, importable by its worker processes, and its :class:`~benches.compare.common.Peer`),
``record`` (how jobs prove they ran), ``report`` (markdown, chart, summary).
"""
