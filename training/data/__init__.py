"""Datasets: shipped demo data and readers for users' own files."""
