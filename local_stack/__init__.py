"""``make run``: the Temporal dev server, the AWS emulator and every service, supervised."""
