"""Reads run directories (never the trainer) and writes tables, plots and a static page."""
