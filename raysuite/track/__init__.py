"""MLflow tracking (the only package importing mlflow)."""
