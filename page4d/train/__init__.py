"""Training: losses as pure functions, parameter freezing by patterns (the trainer follows)."""
