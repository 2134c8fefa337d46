"""PROPFIND Depth 1 on a federation folder, answered without wsgidav's generic machinery.

``propfind_listing(provider, environ, body)`` writes the 207 answer straight from the
folder's kept listing (``FederationProvider.listing``): wsgidav's generic path (a property
lookup per name per child, an ElementTree of the whole answer) takes over 1 s for 10,000
files. Rules:

- it answers allprop, or a ``<D:prop>`` of named properties (live ones have their values,
  any other is a 404 propstat), on a folder, with no conditional header, no lock anywhere
  and no dead property at or below the folder; anything else, and any doubt, is None:
  wsgidav answers;
- the answer says what wsgidav's would: the same hrefs (quoted as it quotes them), the
  same properties, values and statuses;
- an allprop answer is written in pieces of ``PIECE`` responses, sent while the next is
  written; a plain file's whole ``<D:response>`` is one format, its times and MIME type
  remembered per second and per name's type key across the listing.
"""

import functools
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from urllib.parse import quote
from xml.sax.saxutils import escape

from wsgidav import util

from .davprovider import CONDITIONS, DeadProperties, FederationFolder, timestamp_of, etag_of, type_key

PIECE = 1000  # responses in each piece of a listing's body (about 700 KB): sent while the next is written

_ALLPROP = ("resourcetype", "creationdate", "getcontentlength", "getcontenttype",
            "getlastmodified", "displayname", "getetag", "lockdiscovery", "supportedlock")
_SUPPORTED_LOCK = "".join(
    f"<D:lockentry><D:lockscope><D:{scope}/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>"
    for scope in ("exclusive", "shared"))
_HREF_SAFE = "/!*'(),$-_|."  # what wsgidav leaves unquoted in an href (Nautilus chokes on '%28')
# what quote(name, safe=_HREF_SAFE) leaves as it is: a name of these alone is its own href
_PLAIN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~/!*'(),$|-"
# the end of every plain file's allprop response: no lock on it, the locks it could take
_PLAIN_TAIL = (f"<D:lockdiscovery/><D:supportedlock>{_SUPPORTED_LOCK}</D:supportedlock></D:prop>"
               "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>")


def _requested(body: bytes) -> list[str] | None:
    """["allprop"], the requested property tags ("{ns}name"), or None (wsgidav answers)."""
    if not body.strip():
        return ["allprop"]
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    if root.tag != "{DAV:}propfind" or len(root) != 1:
        return None
    if root[0].tag == "{DAV:}allprop" and not len(root[0]):
        return ["allprop"]
    if root[0].tag == "{DAV:}prop" and len(root[0]):
        return [el.tag for el in root[0]]
    return None


def _live_values(name: str, info: dict, folder: bool, mime_of, times) -> dict[str, str]:
    """XML of the live properties of one listed entry that have a value, by DAV: name."""
    ts = timestamp_of(info)
    values = {"resourcetype": "<D:collection/>" if folder else "",
              "displayname": _xml(name), "lockdiscovery": "", "supportedlock": _SUPPORTED_LOCK}
    if ts is not None:
        values["creationdate"], values["getlastmodified"] = times(ts)
    if not folder:
        values["getcontentlength"] = str(info.get("size") or 0)
        values["getcontenttype"] = _xml(mime_of(name))
        values["getetag"] = _xml(etag_of(info, ts))
    return values


def _allprop(values: dict[str, str]) -> str:
    """The ``<D:prop>`` content of an allprop answer: ``_ALLPROP`` in order, as
    ``_live_values`` gives them (an empty value is an empty element; an absent one is left out)."""
    return "".join([_element(n, values[n]) for n in _ALLPROP if n in values])


def _allprop_of(name: str, info: dict, folder: bool, mime_of, times) -> str:
    """``_allprop(_live_values(...))``, a file with a time (nearly every entry of a big
    listing) written by one format instead of a dict and nine elements."""
    ts = timestamp_of(info)
    if folder or ts is None:
        return _allprop(_live_values(name, info, folder, mime_of, times))
    created, modified = times(ts)
    return (f"<D:resourcetype/><D:creationdate>{created}</D:creationdate>"
            f"<D:getcontentlength>{info.get('size') or 0}</D:getcontentlength>"
            f"{_element('getcontenttype', _xml(mime_of(name)))}<D:getlastmodified>{modified}</D:getlastmodified>"
            f"{_element('displayname', _xml(name))}{_element('getetag', _xml(etag_of(info, ts)))}"
            f"<D:lockdiscovery/><D:supportedlock>{_SUPPORTED_LOCK}</D:supportedlock>")


def _allprop_response(entry_href: str, name: str, info: dict, folder: bool, mime_of, times) -> str:
    """One ``<D:response>`` of an allprop answer."""
    return (f"<D:response><D:href>{_xml(entry_href)}</D:href><D:propstat><D:prop>"
            f"{_allprop_of(name, info, folder, mime_of, times)}"
            "</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>")


def _allprop_responses(href: str, items, mime_of, times) -> Iterator[str]:
    """The allprop ``<D:response>`` of each (name, info) in a folder at ``href``, one by one: what
    ``_allprop_response`` writes, for a plain file (a name that needs no escaping or
    quoting and has a ``type_key``, a modification time, no ETag of its backend's: nearly
    every entry of a big listing) in one format with no call per property."""
    xhref = _xml(href)
    stamps: dict[float, tuple[str, str]] = {}  # a second -> its two time elements: a folder's files share few
    types: dict[str, str] = {}  # a name's ``type_key`` -> its type element
    for name, info in items:
        ts = info.get("mtime")
        if (info["type"] == "directory" or type(ts) is not float or "ETag" in info or "etag" in info
                or name.strip(_PLAIN_CHARS) or (kind := type_key(name)) is None):
            yield _allprop_response(href + _href(name) + ("/" if info["type"] == "directory" else ""),
                                    name, info, info["type"] == "directory", mime_of, times)
            continue
        stamp = stamps.get(ts // 1)
        if stamp is None:
            created, modified = times(ts)
            stamp = stamps[ts // 1] = (f"<D:creationdate>{created}</D:creationdate>",
                                       f"<D:getlastmodified>{modified}</D:getlastmodified>")
        type_element = types.get(kind)
        if type_element is None:
            type_element = types[kind] = _element("getcontenttype", _xml(mime_of(name)))
        size = info.get("size") or 0
        yield (f"<D:response><D:href>{xhref}{name}</D:href><D:propstat><D:prop><D:resourcetype/>{stamp[0]}"
               f"<D:getcontentlength>{size}</D:getcontentlength>{type_element}{stamp[1]}"
               f"<D:displayname>{name}</D:displayname><D:getetag>{int(size):x}-{round(ts * 1_000_000):x}</D:getetag>"
               f"{_PLAIN_TAIL}")


def _in_pieces(head: list[str], responses):
    """A multistatus body: ``head``, the responses, its end, as bytes in pieces of about
    PIECE responses each."""
    piece = head
    for response in responses:
        piece.append(response)
        if len(piece) >= PIECE:
            yield "".join(piece).encode("utf-8")
            piece = []
    piece.append("</D:multistatus>")
    yield "".join(piece).encode("utf-8")


def _element(name: str, value: str) -> str:
    """``<D:name>value</D:name>``, or ``<D:name/>`` where the value is empty."""
    return f"<D:{name}>{value}</D:{name}>" if value else f"<D:{name}/>"


def _xml(text: str) -> str:
    """``text`` escaped for XML content (most names need nothing: then it is ``text`` itself)."""
    return escape(text) if "&" in text or "<" in text or ">" in text else text


def _href(name: str) -> str:
    """``name`` quoted for an href as wsgidav quotes it (most names need nothing)."""
    return quote(name, safe=_HREF_SAFE) if name.strip(_PLAIN_CHARS) else name


def _time_formats():
    """ts -> (RFC 3339, RFC 1123) text, remembered per second: a folder's files share few."""
    known: dict[int, tuple[str, str]] = {}

    def times(ts: float) -> tuple[str, str]:
        second = int(ts // 1)
        if second not in known:
            known[second] = (util.get_rfc3339_time(second), util.get_rfc1123_time(second))
        return known[second]

    return times


@functools.lru_cache(maxsize=256)
def _qname(tag: str, prefix: str | None) -> str:
    name = tag.partition("}")[2] if tag.startswith("{") else tag
    return f"{prefix}:{name}" if prefix else name


def _prop_xml(tag: str, value: str, prefixes: dict[str, str]) -> str:
    qname = _qname(tag, prefixes.get(tag[1:].partition("}")[0]) if tag.startswith("{") else None)
    return f"<{qname}>{value}</{qname}>" if value else f"<{qname}/>"


def propfind_listing(provider, environ, body: bytes) -> Iterable[bytes] | None:
    """The 207 body of a PROPFIND Depth 1 on a folder, in pieces (an allprop answer is
    written piece by piece as it is sent), or None when wsgidav must answer."""
    if environ.get("HTTP_DEPTH") != "1" or any(h in environ for h in CONDITIONS):
        return None
    wanted = _requested(body)
    if wanted is None:
        return None
    folder = provider.get_resource_inst(environ["PATH_INFO"], environ)
    if not isinstance(folder, FederationFolder):
        return None
    locks = provider.lock_manager
    if locks and locks.storage.get_lock_list("/", include_root=True, include_children=True, token_only=True):
        return None  # lockdiscovery would have content: wsgidav knows how to write it
    props = provider.prop_manager
    if props and (not isinstance(props, DeadProperties) or props.any_below(folder.get_ref_url())):
        return None  # dead properties: wsgidav knows how to write them
    listing = provider.listing(folder.fspath)

    def mime_of(name):
        return provider.content_type(name, environ)

    namespaces = sorted({t[1:].partition("}")[0] for t in wanted if t.startswith("{")} - {"DAV:"})
    prefixes = {"DAV:": "D", **{ns: f"ns{i}" for i, ns in enumerate(namespaces, 1)}}
    declared = "".join(f' xmlns:{p}="{escape(ns, {chr(34): "&quot;"})}"' for ns, p in prefixes.items())
    href = folder.get_href()  # the folder's, with its trailing slash: children's hrefs extend it
    times = _time_formats()
    out = [f'<?xml version="1.0" encoding="utf-8" ?>\n<D:multistatus{declared}>']
    entries = [(href, folder.get_display_name(), folder.info, True)]
    items = listing.items()  # in order
    if wanted == ["allprop"]:  # the usual question: plain files written by one format each
        out.append(_allprop_response(*entries[0], mime_of, times))
        return _in_pieces(out, _allprop_responses(href, items, mime_of, times))
    entries += [(href + _href(name) + ("/" if info["type"] == "directory" else ""), name, info,
                 info["type"] == "directory") for name, info in items]
    for entry_href, name, info, is_folder in entries:
        values = _live_values(name, info, is_folder, mime_of, times)
        out.append(f"<D:response><D:href>{_xml(entry_href)}</D:href>")
        found, missing = [], []
        for tag in wanted:
            name = tag[len("{DAV:}"):] if tag.startswith("{DAV:}") else None
            if name in values:
                found.append(_prop_xml(tag, values[name], prefixes))
            else:
                missing.append(_prop_xml(tag, "", prefixes))
        for group, status in ((found, "200 OK"), (missing, "404 Not Found")):
            if group:
                out.append(f"<D:propstat><D:prop>{''.join(group)}</D:prop>"
                           f"<D:status>HTTP/1.1 {status}</D:status></D:propstat>")
        out.append("</D:response>")
    out.append("</D:multistatus>")
    return ["".join(out).encode("utf-8")]
