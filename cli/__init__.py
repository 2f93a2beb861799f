"""The `lethe` command, the top of the import graph: admin commands that start the API and the worker."""
