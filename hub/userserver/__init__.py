"""In each user's micro-infrastructure: its launcher, the WebDAV endpoint and its authentication."""
