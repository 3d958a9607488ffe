"""The ops dashboard (Streamlit). Built in issue #8; `clinstream up` does not start it yet."""
