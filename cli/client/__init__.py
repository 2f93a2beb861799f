"""The client commands: talk HTTP to any Lethe, nothing else (no catalogue, no torch)."""
