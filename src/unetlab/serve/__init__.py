"""`unetlab serve RUN`: a trained run behind a JSON API (FastAPI) and a small web page (serve/app.py).

Kept free of imports so that `import unetlab.serve` works without the `serve` extra; the app itself
(`unetlab.serve.app`) needs fastapi, uvicorn and python-multipart (`pip install unetlab[serve]`)."""
