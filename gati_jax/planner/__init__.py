"""The planner: latency profiles, the cost model, and cache selection under a bound and budget."""
