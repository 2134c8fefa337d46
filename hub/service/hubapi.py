"""Calls to the hub's REST API shared by the parts of the skerry service."""

import httpx

PAGE = 200  # items per page asked of the hub


async def every_item(client: httpx.AsyncClient, path: str, params: dict | None = None) -> list[dict]:
    """Every item of one of the hub's paginated lists (``users``, ``groups``...), page by page;
    ``client`` has the hub API's base URL and a token."""
    items, offset = [], 0
    while True:
        r = await client.get(path, params={**(params or {}), "offset": offset, "limit": PAGE},
                             headers={"Accept": "application/jupyterhub-pagination+json"})
        r.raise_for_status()
        page = r.json()
        items += page["items"]
        following = (page.get("_pagination") or {}).get("next")
        if not following:
            return items
        offset = following["offset"]
