"""The report: figures and the HTML page."""
