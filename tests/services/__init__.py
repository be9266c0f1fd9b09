"""Fixtures that start real services for the tests that need them (PostgreSQL, an MLflow
server, a fake Hugging Face hub). Each starts its own process on 127.0.0.1 and a free port and
removes everything it made; it skips, with the reason, only where the service cannot exist here.
"""
