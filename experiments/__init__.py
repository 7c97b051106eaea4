"""Scripts that reproduce the papers' tables and figures (run as ``python -m experiments.<name>``)."""
