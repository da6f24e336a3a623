"""The HTTP surface: the app, the thin routes, the sampling fast lane, middleware.

The only package that speaks HTTP to clients: it turns requests into pipeline calls and
the pipeline's answers and errors into responses.
"""
