"""One adapter per engine kind holding its quirks (request shaping, abort, stream
dialect), the engines' own metric names, and the embedded llama.cpp worker.
"""
