"""Tables, plots and reports built from the MLflow store alone."""
