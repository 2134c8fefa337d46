"""The skerry service process (``python -m skerry.hub.service.app``): the platform's REST API."""
