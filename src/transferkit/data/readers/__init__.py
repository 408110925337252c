"""One small reader per data source behind ``data/specs.load_data``: the built-in sets (in memory),
sets shipped inside PyPI packages, parquet files and ``datasets`` objects, Python objects
(``tk.fit(Dataset)``), and WebDataset-style tar shards. Each returns image sets by split."""
