"""The run engine: start a run, drive it phase by phase under a lease, finish it with a report."""
