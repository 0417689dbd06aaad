"""Training-time compression algorithms, one package per algorithm."""
