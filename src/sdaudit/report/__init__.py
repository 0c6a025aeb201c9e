"""Reporting: figures and a self-contained HTML page from an audit's output folder."""
