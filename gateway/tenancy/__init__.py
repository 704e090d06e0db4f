"""Tenants, their API keys and quotas, and usage reports: the operations behind the admin API and CLI."""
