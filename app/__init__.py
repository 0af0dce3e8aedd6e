"""The Streamlit app: the entry point (`main.py`) and the UI pieces the pages share."""
