"""A Kubernetes API server of our own, with a stand-in kubelet, for the Kubernetes backend's tests.

    python tests/kubeapi.py --port 0 --root DIR [--image IMAGE]... [--gpus N] [--node-label K=V]...
    # prints one line, "ready <url>", once it serves; stops (pods' processes too) on SIGTERM

No kube-apiserver, k3s, kind or kwok can run on our machines (../shared/STACK.md), so this
speaks the API's HTTP protocol itself, as much of it as the real clients (kubernetes_asyncio
under KubeSpawner, kubernetes, kr8s) use:

- resources: namespaces; in a namespace: pods (and their ``status`` and ``log``), services,
  secrets, configmaps, persistentvolumeclaims, events, serviceaccounts (core v1),
  deployments (apps/v1, kept by tests/kubecontrollers.py), networkpolicies
  (networking.k8s.io/v1), daskclusters, daskworkergroups, daskjobs, daskautoscalers
  (kubernetes.dask.org/v1); discovery (``/api``, ``/apis``, ``/version``);
- create (409 AlreadyExists, ``generateName``, 422 without a name), get (404 NotFound), list
  (``labelSelector``: ``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``;
  ``fieldSelector``: ``=``/``!=`` on dotted paths), replace (409 Conflict on a stale
  ``resourceVersion``), patch (JSON patch; merge patch, and a strategic merge patch taken as
  one), delete;
  errors are ``Status`` objects with ``reason`` and ``code``;
- every object gets ``metadata.uid``, ``creationTimestamp`` and an increasing ``resourceVersion``;
- watches (``?watch=1``): ADDED, MODIFIED and DELETED after the ``resourceVersion`` given
  (410 Expired where that is older than the events kept), ended after ``timeoutSeconds``;
- deleting an object deletes its dependents (``ownerReferences``), as the garbage collector does.

The kubelet (tests/kubelet.py) makes the pods run: one node, ``standin``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

CORE = {"namespaces": ("Namespace", False), "pods": ("Pod", True), "services": ("Service", True),
        "secrets": ("Secret", True), "configmaps": ("ConfigMap", True), "events": ("Event", True),
        "persistentvolumeclaims": ("PersistentVolumeClaim", True), "serviceaccounts": ("ServiceAccount", True)}
GROUPS = {
    "apps/v1": {"deployments": ("Deployment", True)},
    "networking.k8s.io/v1": {"networkpolicies": ("NetworkPolicy", True)},
    "kubernetes.dask.org/v1": {"daskclusters": ("DaskCluster", True), "daskworkergroups": ("DaskWorkerGroup", True),
                               "daskjobs": ("DaskJob", True), "daskautoscalers": ("DaskAutoscaler", True)},
}
KEPT_EVENTS = 10_000  # watch history; older resourceVersions get 410 Expired
GPU = "nvidia.com/gpu"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def response(self) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": self.message, "reason": self.reason, "code": self.code},
                                 status=self.code)


# -- selectors ----------------------------------------------------------------------------------


def label_matcher(selector: str):
    """A predicate on a labels dict, from a label selector string."""
    tests = []
    for term in re.findall(r"(?:[^,(]|\([^)]*\))+", selector or ""):
        term = term.strip()
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            tests.append(lambda ls, k=key, vs=values, op=op: (ls.get(k) in vs) == (op == "in"))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", term):
            key, op, value = m.groups()
            tests.append(lambda ls, k=key, v=value, op=op: (ls.get(k) == v) == (op != "!="))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", term):
            neg, key = m.groups()
            tests.append(lambda ls, k=key, neg=neg: (k in ls) != bool(neg))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return lambda labels: all(t(labels or {}) for t in tests)


def field_matcher(selector: str):
    tests = []
    for term in filter(None, (selector or "").split(",")):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", term.strip())
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        path, op, value = m.groups()

        def test(obj, path=path, op=op, value=value):
            node = obj
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            return (str(node) if node is not None else "") == value if op != "!=" else \
                (str(node) if node is not None else "") != value
        tests.append(test)
    return lambda obj: all(t(obj) for t in tests)


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def stored(secret: dict) -> None:
    """A Secret as the API server keeps it: ``stringData`` written into ``data`` (base64)."""
    plain = secret.pop("stringData", None) or {}
    secret["data"] = {**(secret.get("data") or {}),
                      **{k: base64.b64encode(v.encode()).decode() for k, v in plain.items()}}


def json_patch(doc, ops):
    """RFC 6902 JSON patch: add, remove, replace and test, at JSON pointers."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1] if parts else None
        kind = op["op"]
        if kind == "test":
            here = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if here != op.get("value"):
                raise ApiError(422, "Invalid", f"the test of {op['path']} failed")
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, op["value"])
                else:
                    parent[index] = op["value"]
            else:
                parent[last] = op["value"]
        else:
            raise ApiError(422, "Invalid", f"unsupported JSON patch op {kind!r}")
    return doc


# -- the store --------------------------------------------------------------------------------


class Store:
    """Objects by (group/version, plural, namespace, name); every change is an event watchers see."""

    def __init__(self):
        self.objects: dict[tuple, dict] = {}
        self.version = itertools.count(1000)
        self.rv = 1000
        self.events: list[tuple[int, str, tuple, dict]] = []  # (rv, type, key, object)
        self.changed = asyncio.Condition()
        self.hooks = []  # called (type, key, obj) after each change: the kubelet

    def _stamp(self, obj: dict) -> dict:
        self.rv = next(self.version)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return obj

    async def _emit(self, kind: str, key: tuple, obj: dict) -> None:
        self.events.append((self.rv, kind, key, copy.deepcopy(obj)))
        del self.events[:-KEPT_EVENTS]
        async with self.changed:
            self.changed.notify_all()
        for hook in self.hooks:
            hook(kind, key, obj)

    async def create(self, gv, plural, ns, obj):
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", f"{plural}: metadata.name: Required value: name or generateName is required")
        key = (gv, plural, ns, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists')
        if ns and plural != "namespaces" and (("v1", "namespaces", None, ns) not in self.objects):
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
        if ns:
            meta["namespace"] = ns
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        meta.pop("deletionTimestamp", None)
        obj.setdefault("apiVersion", gv)
        if plural == "secrets":
            stored(obj)
        if plural == "pods":
            obj.setdefault("status", {"phase": "Pending", "conditions": []})
        self.objects[key] = self._stamp(obj)
        await self._emit("ADDED", key, obj)
        return obj

    def get(self, gv, plural, ns, name):
        try:
            return self.objects[(gv, plural, ns, name)]
        except KeyError:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found') from None

    async def replace(self, gv, plural, ns, name, obj, status_only=False):
        old = self.get(gv, plural, ns, name)
        given = (obj.get("metadata") or {}).get("resourceVersion")
        if given and given != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object has been '
                                            "modified; please apply your changes to the latest version and try again")
        if status_only:
            new = {**old, "status": obj.get("status", {})}
        else:
            new = {**obj, "metadata": {**obj.get("metadata", {}), **{k: old["metadata"][k] for k in
                                                                      ("uid", "creationTimestamp", "namespace")
                                                                      if k in old["metadata"]}}}
            if "status" in old and "status" not in obj:
                new["status"] = old["status"]
        if plural == "secrets":
            stored(new)
        self.objects[(gv, plural, ns, name)] = self._stamp(new)
        await self._emit("MODIFIED", (gv, plural, ns, name), new)
        return new

    async def patch(self, gv, plural, ns, name, patch, status_only=False):
        """A merge patch (a dict; a strategic merge patch is taken as one), or a JSON patch (a list)."""
        old = self.get(gv, plural, ns, name)
        if isinstance(patch, list):
            new = json_patch(old, patch)
            if status_only:
                new = {**old, "status": new.get("status")}
        else:
            new = merge_patch(old, {"status": patch.get("status")} if status_only else patch)
        new["metadata"] = {**new.get("metadata", {}), "resourceVersion": old["metadata"]["resourceVersion"]}
        return await self.replace(gv, plural, ns, name, new, status_only=False)

    async def delete(self, gv, plural, ns, name, graceful=None):
        obj = self.get(gv, plural, ns, name)
        if graceful is not None and "deletionTimestamp" not in obj["metadata"]:
            obj = copy.deepcopy(obj)
            obj["metadata"]["deletionTimestamp"] = now()
            obj["metadata"]["deletionGracePeriodSeconds"] = graceful
            self.objects[(gv, plural, ns, name)] = self._stamp(obj)
            await self._emit("MODIFIED", (gv, plural, ns, name), obj)
            return obj
        if graceful is not None:
            return obj  # already going
        return await self.remove((gv, plural, ns, name))

    async def remove(self, key):
        obj = self.objects.pop(key, None)
        if obj is None:
            return None
        self._stamp(obj)
        await self._emit("DELETED", key, obj)
        uid = obj["metadata"]["uid"]
        for other_key, other in list(self.objects.items()):  # the garbage collector
            if any(ref.get("uid") == uid for ref in other["metadata"].get("ownerReferences", [])):
                await self.delete(*other_key, graceful=None if other_key[1] != "pods" else 0)
        return obj

    def select(self, gv, plural, ns, labels="", fields=""):
        lm, fm = label_matcher(labels), field_matcher(fields)
        return [o for (g, p, n, _), o in sorted(self.objects.items())
                if g == gv and p == plural and (ns is None or n == ns)
                and lm(o["metadata"].get("labels")) and fm(o)]


# -- the HTTP API -----------------------------------------------------------------------------


def resource(request: web.Request):
    """(group/version, plural, namespace, name, subresource) of a request's path."""
    info = request.match_info
    gv = f"{info['group']}/{info['version']}" if "group" in info else "v1"
    table = CORE if gv == "v1" else GROUPS.get(gv)
    plural = info["plural"]
    if table is None or plural not in table:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({gv} {plural})")
    return gv, plural, info.get("namespace"), info.get("name"), info.get("sub")


def list_kind(gv, plural) -> str:
    return (CORE if gv == "v1" else GROUPS[gv])[plural][0] + "List"


class Api:
    def __init__(self, store: Store, kubelet):
        self.store, self.kubelet = store, kubelet

    @web.middleware
    async def errors(self, request, handler):
        try:
            return await handler(request)
        except ApiError as e:
            return e.response()

    async def collection(self, request):
        gv, plural, ns, _, _ = resource(request)
        if request.method == "POST":
            return web.json_response(await self.store.create(gv, plural, ns, await request.json()), status=201)
        q = request.query
        if q.get("watch") in ("1", "true", "True"):
            return await self.watch(request, gv, plural, ns)
        items = self.store.select(gv, plural, ns, q.get("labelSelector", ""), q.get("fieldSelector", ""))
        return web.json_response({"kind": list_kind(gv, plural), "apiVersion": gv,
                                  "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})

    async def one(self, request):
        gv, plural, ns, name, sub = resource(request)
        if sub == "log" and plural == "pods":
            return web.Response(text=self.kubelet.log(ns, name, request.query.get("container")))
        if sub not in (None, "status", "scale"):
            raise ApiError(404, "NotFound", f"no subresource {sub!r}")
        status_only = sub == "status"
        if request.method == "GET":
            return web.json_response(self.store.get(gv, plural, ns, name))
        if request.method == "PUT":
            return web.json_response(await self.store.replace(gv, plural, ns, name, await request.json(), status_only))
        if request.method == "PATCH":
            return web.json_response(await self.store.patch(gv, plural, ns, name, await request.json(), status_only))
        if request.method == "DELETE":
            graceful = None
            if plural == "pods":
                body = await request.json() if request.can_read_body else {}
                grace = (body or {}).get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
                graceful = 30 if grace is None else int(grace)
            obj = await self.store.delete(gv, plural, ns, name, graceful)
            return web.json_response(obj)
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed here")

    async def watch(self, request, gv, plural, ns):
        q = request.query
        since = int(q.get("resourceVersion") or 0)
        lm, fm = label_matcher(q.get("labelSelector", "")), field_matcher(q.get("fieldSelector", ""))
        timeout = float(q.get("timeoutSeconds") or 1800)
        if since and self.store.events and since < self.store.events[0][0] - 1:
            raise ApiError(410, "Expired", f"too old resource version: {since} ({self.store.events[0][0]})")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            await self._stream(response, gv, plural, ns, since, lm, fm, timeout)
        except ConnectionResetError:  # the client went away
            pass
        return response

    async def _stream(self, response, gv, plural, ns, since, lm, fm, timeout):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not since:  # a watch from now on starts with what exists, as ADDED
            for obj in self.store.select(gv, plural, ns):
                if lm(obj["metadata"].get("labels")) and fm(obj):
                    await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            since = self.store.rv
        while loop.time() < deadline:
            for rv, kind, (g, p, n, _), obj in [e for e in self.store.events if e[0] > since]:
                since = rv
                if g == gv and p == plural and (ns is None or n == ns) and lm(obj["metadata"].get("labels")) \
                        and fm(obj):
                    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            async with self.store.changed:
                if self.store.events and self.store.events[-1][0] > since:
                    continue  # came while we wrote
                try:
                    await asyncio.wait_for(self.store.changed.wait(), max(0.0, min(1.0, deadline - loop.time())))
                except TimeoutError:
                    pass
        await response.write_eof()

    async def discovery(self, request):
        path = request.path.rstrip("/")
        if path == "/version":
            return web.json_response({"major": "1", "minor": "37", "gitVersion": "v1.37.0-skerry-standin",
                                      "platform": "linux/amd64"})
        if path == "/api":
            return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for gv in GROUPS]})
        gv = "v1" if path == "/api/v1" else path.removeprefix("/apis/")
        table = CORE if gv == "v1" else GROUPS.get(gv)
        if table is None:
            raise ApiError(404, "NotFound", f"no API group {gv}")
        return web.json_response({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
            {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
            for plural, (kind, namespaced) in table.items()]})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.errors], client_max_size=64 * 2**20)
        r = app.router
        for prefix in ("/api/{version:v1}", "/apis/{group}/{version}"):
            r.add_route("*", prefix + "/namespaces/{namespace}/{plural}", self.collection)
            r.add_route("*", prefix + "/namespaces/{namespace}/{plural}/{name}", self.one)
            r.add_route("*", prefix + "/namespaces/{namespace}/{plural}/{name}/{sub}", self.one)
            r.add_route("*", prefix + "/{plural}", self.collection)
        r.add_route("*", "/api/v1/{plural:namespaces}/{name}", self.one)
        for path in ("/version", "/api", "/apis", "/api/v1", "/apis/{group}/{version}"):
            r.add_get(path, self.discovery)
            r.add_get(path + "/", self.discovery)  # kr8s asks for /version/
        return app


@contextlib.contextmanager
def running(root: Path, images=(), namespaces=(), gpus: int = 0):
    """This server (and its kubelet) as a process, for a test: yields its URL; stops it, and
    every pod's processes, afterwards. ``root`` (the node's folder) is opened for the pods'
    users to pass through to their volumes (o+x, never o+r), as the folders above it."""
    from helpers import open_for_accounts  # the tests' own: this file also runs as a program

    os.chmod(open_for_accounts(root), 0o711)
    argv = [sys.executable, __file__, "--root", str(root), "--gpus", str(gpus),
            *[a for i in images for a in ("--image", i)], *[a for n in namespaces for a in ("--namespace", n)]]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"the stand-in API server did not start: {line!r}")
        yield line.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def dask_operator(url: str, folder: Path, namespace: str):
    """The real dask-kubernetes operator (its kopf controller: .ci/run installs
    ``dask-kubernetes-operator``, a venv of its own) against this server, watching
    ``namespace``; its log in ``folder``."""
    operator = shutil.which("dask-kubernetes-operator")
    assert operator, "dask-kubernetes-operator is not on PATH: .ci/run installs it (a venv of dask-kubernetes)"
    config = kubeconfig(url, folder / "kubeconfig", namespace)
    with open(folder / "operator.log", "wb") as log:
        proc = subprocess.Popen([operator, "--standalone", "--namespace", namespace],
                                env={**os.environ, "KUBECONFIG": str(config)}, stdout=log, stderr=log)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:  # kopf lingers over its timers: nothing of ours is left to it
                proc.kill()
                proc.wait()


def kubeconfig(url: str, path: Path, namespace: str = "default") -> Path:
    """A kubeconfig for this server (no credentials: it asks for none), as a program outside a
    cluster is given one."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": url}}],
        "users": [{"name": "standin", "user": {}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin",
                                                     "namespace": namespace}}]}))
    return path


async def serve(args) -> None:
    from kubecontrollers import Deployments  # beside this file: the controllers and the kubelet
    from kubelet import Kubelet

    store = Store()
    Deployments(store)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    kubelet = Kubelet(store, root, set(args.image), args.gpus, dict(kv.split("=", 1) for kv in args.node_label))
    for ns in ("default", "kube-system", *args.namespace):
        await store.create("v1", "namespaces", None, {"kind": "Namespace", "metadata": {"name": ns}})
    # at stop, open watches are cut at once (a client would see its watch end, and list again)
    runner = web.AppRunner(Api(store, kubelet).app(), handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    port = runner.addresses[0][1]
    print(f"ready http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await kubelet.stop_all()
    await runner.cleanup()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", required=True, help="the node's folder: pods' volumes and logs")
    parser.add_argument("--image", action="append", default=[], help="an image the node has")
    parser.add_argument("--gpus", type=int, default=0, help="the node's nvidia.com/gpu")
    parser.add_argument("--node-label", action="append", default=[], help="KEY=VALUE, a label of the node")
    parser.add_argument("--namespace", action="append", default=[], help="a namespace made at start")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    import kubeapi  # this file as the module the kubelet imports from, not as __main__: one ApiError

    sys.exit(kubeapi.main())
