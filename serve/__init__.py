"""The Ray Serve application of adaray (serve/app.py, serve/config.yaml)."""
