//! pikafs-testkit (in progress)
