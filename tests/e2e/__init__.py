"""End-to-end tests (a package, so the shared fake and bot are torn down when its last test ends)."""
