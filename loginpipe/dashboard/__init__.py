"""The live dashboard: a Streamlit page over the summary, metrics and output topics."""
