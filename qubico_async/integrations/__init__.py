"""Glue for web frameworks: mount a `WebhookHub` as an HTTP endpoint (`.aiohttp`, `.fastapi`)."""
