"""Developer tools not needed by the running service: synthetic cohorts (and, in tests/support, local peers)."""
