"""Answers: retrieved pages to grounded answers (asking, citations, where on the page)."""
