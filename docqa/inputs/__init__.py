"""Inputs: files to page images (discovering and sniffing sources, rendering PDF pages and images)."""
