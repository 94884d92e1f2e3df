"""Command-line tools: data packing, demo data, export, inference, model summary."""
