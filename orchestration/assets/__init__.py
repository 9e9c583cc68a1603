"""Assets, one module per group."""
