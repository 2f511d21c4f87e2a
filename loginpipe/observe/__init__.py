"""What the pipeline tells about itself: stats lines, the final summary, the summary and metrics
topics, the Prometheus endpoint."""
