"""The Gradio app: `python -m app.main` or `personalize app` (needs `pip install -e '.[app]'`)."""
