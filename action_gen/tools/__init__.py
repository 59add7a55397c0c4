"""Command-line tools at the edge of the package (formats from other projects)."""
