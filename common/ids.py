"""How workflow ids begin: the one part of the workflows' vocabulary that logging needs.

``workflows.messages`` re-exports both names with the rest of the shared vocabulary; they live
here so that ``common`` (logging, the dropped-signal counter) can tell a process's workflow id
without importing the workflows' messages.
"""

PROCESS_ID_PREFIX = "process-"
MUTEX_ID_PREFIX = "mutex-"
