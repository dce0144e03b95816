"""What runs on the cluster: data, pretraining, evaluation. Imports models/ and Ray, never MLflow."""
