"""The quota service: a JupyterHub-managed service that owns the platform's data."""
