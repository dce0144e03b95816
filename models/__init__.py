"""TIPS in pure PyTorch: towers, heads, losses, the EMA teacher. Imports neither Ray nor MLflow."""
