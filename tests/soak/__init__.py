"""Long runs under every fault at once (marked ``slow``; also runnable as scripts)."""
