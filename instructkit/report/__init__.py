"""The HTML report: every stage's results on one page, rendered from jinja2 templates, and its plots."""
