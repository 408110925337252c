"""Data audit: label issues, near-duplicates, outliers and leakage, from the frozen backbone's cached features."""
