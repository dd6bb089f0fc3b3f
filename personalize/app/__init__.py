"""The Gradio app: `personalize app` or `python -m personalize.app` (needs `pip install 'personalize[app]'`)."""
