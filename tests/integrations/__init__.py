"""Integrations: Django, SQLAlchemy, FastAPI/Starlette, pools and proxies, node-postgres."""
