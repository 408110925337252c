"""Choosing for the user: rank candidate recipes on the data, plan a run within a time budget, execute the plan."""
