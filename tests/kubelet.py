"""The stand-in kubelet of tests/kubeapi.py: makes the pods that server keeps run, as local processes.

The kubelet: one node, ``standin``, with the GPUs (``nvidia.com/gpu``), labels and images it is
given. For each new pod it does what a scheduler and a kubelet would, and says so in events
and the pod's status:

- a pod asking more GPUs than the node has, or whose ``nodeSelector`` the node's labels do
  not match, stays Pending (``FailedScheduling``); a pod whose image the node does not have
  stays Pending with ``ErrImagePull`` (``Failed``); a pod whose Secret, ConfigMap or claim
  does not exist yet waits for it (``FailedMount``);
- volumes are folders under ``ROOT``: ``emptyDir``, ``secret`` and ``configMap`` (their files,
  ``defaultMode``, owned by root and the pod's ``fsGroup``), ``persistentVolumeClaim`` (one
  folder per claim, kept after the pod, group ``fsGroup``);
- each container's command runs as a local process in a session of its own, as the pod's
  ``runAsUser``/``runAsGroup`` with ``fsGroup`` as its one supplementary group, with its
  ``env`` resolved (values, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef`` to
  ``status.podIP``), its output in the container's log (``ROOT/logs/<namespace>/<pod>/``, kept);
- what a container runtime's mount and network namespaces do is done by rewriting: a
  ``mountPath`` at the start of the command's arguments, the env's values or ``workingDir``
  becomes that volume's folder, and ``0.0.0.0`` the pod's IP, its own loopback address
  (127.0.x.y); an image the node has is this machine's Python environment (its ``python``
  first on ``PATH``);
- the pod is Running with its IP once every process started; a container with an
  ``httpGet`` readiness probe is ready once the probe answers below 400, any other at once;
  a process that exits is reported ``terminated`` with its exit code, and started again
  under ``restartPolicy`` Always, or OnFailure after a failure;
- deleting a pod sets its ``deletionTimestamp``; its processes get SIGTERM, SIGKILL after the
  grace period (at most 5 s here), and then the pod is gone (DELETED).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import shutil
import signal
import sys
import traceback
import uuid
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout

from kubeapi import GPU, ApiError, Store, now

GRACE_CAP = 5.0  # seconds a deleted pod's processes get before SIGKILL (the real default is 30)


class Kubelet:
    """One node: schedules, mounts, starts and stops each pod's containers as local processes."""

    def __init__(self, store: Store, root: Path, images: set[str], gpus: int, labels: dict[str, str]):
        self.store, self.root, self.images, self.gpus = store, root, images, gpus
        self.labels = {"kubernetes.io/hostname": "standin", **labels}
        self.pods: dict[tuple, PodRun] = {}
        self.addresses = (f"127.0.{i // 250 + 1}.{i % 250 + 2}" for i in itertools.count())
        store.hooks.append(self.changed)

    def changed(self, kind, key, obj):
        if key[1] != "pods":
            return
        if kind == "ADDED":
            run = PodRun(self, key, next(self.addresses))
            self.pods[key] = run
            run.task = asyncio.ensure_future(run.run())
        elif kind == "MODIFIED" and "deletionTimestamp" in obj["metadata"] and key in self.pods:
            self.pods[key].delete(obj["metadata"].get("deletionGracePeriodSeconds", 30))
        elif kind == "DELETED" and key in self.pods:
            self.pods.pop(key).delete(0)

    def log(self, ns, name, container):
        run = self.pods.get(("v1", "pods", ns, name))
        if run is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        return run.log(container)

    async def event(self, pod: dict, reason: str, message: str, kind: str = "Normal"):
        meta = pod["metadata"]
        await self.store.create("v1", "events", meta["namespace"], {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {"kind": "Pod", "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                               "apiVersion": "v1"},
            "reason": reason, "message": message, "type": kind, "source": {"component": "kubelet", "host": "standin"},
            "firstTimestamp": now(), "lastTimestamp": now(), "eventTime": None, "count": 1})

    async def stop_all(self):
        for run in list(self.pods.values()):
            run.delete(0)
        await asyncio.gather(*(r.task for r in self.pods.values() if r.task), return_exceptions=True)


class PodRun:
    """What the kubelet does for one pod, from scheduling to its deletion."""

    def __init__(self, kubelet: Kubelet, key: tuple, ip: str):
        self.kubelet, self.key, self.ip = kubelet, key, ip
        self.store = kubelet.store
        self.folder: Path | None = None
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.restarts: dict[str, int] = {}
        self.state: dict[str, dict] = {}
        self.ready: dict[str, bool] = {}
        self.deleting = asyncio.Event()
        self.grace = 30.0
        self.task = None

    @property
    def logs(self) -> Path:
        """The containers' output: kept after the pod, for a test to say why it failed."""
        return self.kubelet.root / "logs" / self.key[2] / self.key[3]

    @property
    def pod(self) -> dict | None:
        return self.store.objects.get(self.key)

    def delete(self, grace):
        self.grace = min(float(grace), GRACE_CAP)
        self.deleting.set()

    def log(self, container):
        names = [c["name"] for c in (self.pod or {}).get("spec", {}).get("containers", [])]
        name = container or (names[0] if names else "")
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def status(self, **changes):
        pod = self.pod
        if pod is None or (self.deleting.is_set() and not changes.get("final")):
            return
        changes.pop("final", None)
        status = {**pod.get("status", {}), **changes}
        await self.store.patch(*self.key, {"status": status}, status_only=True)

    async def run(self):
        try:
            if await self._schedule() and await self._pull() and await self._mount():
                await self._start_all()
                await self._watch_processes()
        except Exception as e:  # a bug here: said in the pod's events, and in full on stderr
            traceback.print_exc()
            if self.pod is not None:
                await self.kubelet.event(self.pod, "KubeletError", f"the stand-in kubelet failed: {e!r}", "Warning")
        finally:
            await self._stop_all()
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
            if self.key in self.store.objects and "deletionTimestamp" in self.store.objects[self.key]["metadata"]:
                await self.store.remove(self.key)

    async def _pending(self, reason: str, message: str, kind="Warning", **status) -> bool:
        pod = self.pod
        if pod is not None:
            await self.kubelet.event(pod, reason, message, kind)
            await self.status(phase="Pending", **status)
        await self.deleting.wait()
        return False

    async def _schedule(self) -> bool:
        spec = self.pod["spec"]
        wanted = sum(int(c.get("resources", {}).get("limits", {}).get(GPU, 0)) for c in spec["containers"])
        selector = spec.get("nodeSelector") or {}
        unmatched = {k: v for k, v in selector.items() if self.kubelet.labels.get(k) != v}
        if wanted > self.kubelet.gpus or unmatched:
            why = (f"1 Insufficient {GPU}" if wanted > self.kubelet.gpus
                   else "1 node(s) didn't match Pod's node affinity/selector")
            message = f"0/1 nodes are available: {why}. preemption: 0/1 nodes are available."
            return await self._pending("FailedScheduling", message, conditions=[
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                 "lastTransitionTime": now()}])
        await self.store.patch(*self.key, {"spec": {"nodeName": "standin"}})
        await self.kubelet.event(self.pod, "Scheduled", f"Successfully assigned {self.key[2]}/{self.key[3]} to standin")
        await self.status(phase="Pending", conditions=[{"type": "PodScheduled", "status": "True",
                                                        "lastTransitionTime": now()}], hostIP="127.0.0.1")
        return True

    async def _pull(self) -> bool:
        for c in self.pod["spec"]["containers"]:
            if c["image"] not in self.kubelet.images:
                await self.status(containerStatuses=[
                    {"name": x["name"], "image": x["image"], "imageID": "", "ready": False, "restartCount": 0,
                     "started": False, "state": {"waiting": {"reason": "ErrImagePull",
                                                             "message": f"rpc error: image {c['image']!r} not found"}}}
                    for x in self.pod["spec"]["containers"]])
                return await self._pending("Failed", f'Failed to pull image "{c["image"]}": rpc error: code = '
                                           f"NotFound desc = failed to pull and unpack image: not found")
        return True

    async def _mount(self) -> bool:
        """The volumes as folders; waits (FailedMount) while a Secret, ConfigMap or claim is missing."""
        pod, said = self.pod, set()
        ns = self.key[2]
        self.folder = self.kubelet.root / "pods" / pod["metadata"]["uid"]
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        while not self.deleting.is_set():
            missing = None
            for v in pod["spec"].get("volumes", []):
                for source, plural, field in (("secret", "secrets", "secretName"), ("configMap", "configmaps", "name"),
                                              ("persistentVolumeClaim", "persistentvolumeclaims", "claimName")):
                    if source in v and ("v1", plural, ns, v[source][field]) not in self.store.objects:
                        missing = (v["name"], plural, v[source][field])
            if missing is None:
                break
            if missing not in said:
                said.add(missing)
                await self.kubelet.event(pod, "FailedMount", f'MountVolume.SetUp failed for volume "{missing[0]}" : '
                                                             f'{missing[1][:-1]} "{missing[2]}" not found', "Warning")
            try:
                await asyncio.wait_for(self.deleting.wait(), 0.2)
            except TimeoutError:
                pass
        if self.deleting.is_set():
            return False
        self.mounts: dict[str, Path] = {}
        for folder in (self.folder / "volumes", self.kubelet.root / "volumes" / ns):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.kubelet.root / "pods", self.folder, self.folder / "volumes",
                       self.kubelet.root / "volumes", self.kubelet.root / "volumes" / ns):
            os.chmod(folder, 0o711)  # the pod's users pass through to their volumes, whatever our umask
        for v in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in v:
                where = self.kubelet.root / "volumes" / ns / v["persistentVolumeClaim"]["claimName"]
            else:
                where = self.folder / "volumes" / v["name"]
            where.mkdir(parents=True, exist_ok=True)
            os.chmod(where, 0o2770 if "secret" not in v and "configMap" not in v else 0o750)
            if fs_group is not None:
                os.chown(where, 0, fs_group)
            for source, plural, field in (("secret", "secrets", "secretName"), ("configMap", "configmaps", "name")):
                if source in v:
                    obj = self.store.objects[("v1", plural, ns, v[source][field])]
                    if source == "secret":
                        data = {k: base64.b64decode(x) for k, x in (obj.get("data") or {}).items()}
                    else:
                        data = {k: x.encode() for k, x in (obj.get("data") or {}).items()}
                    items = v[source].get("items") or [{"key": k, "path": k} for k in data]
                    for item in items:
                        path = where / item["path"]
                        path.write_bytes(data[item["key"]])
                        os.chmod(path, item.get("mode", v[source].get("defaultMode", 0o644)))
                        if fs_group is not None:
                            os.chown(path, 0, fs_group)
            self.mounts[v["name"]] = where
        self.logs.mkdir(parents=True, exist_ok=True)
        return True

    def _rewrite(self, text: str, mounts: list[tuple[str, Path]]) -> str:
        for path, where in mounts:
            if text == path or text.startswith(path.rstrip("/") + "/"):
                text = str(where) + text[len(path.rstrip("/")):]
                break
        return text.replace("0.0.0.0", self.ip)

    def _service_hosts(self) -> dict[str, str]:
        """Each Service of the pod's namespace, by every name DNS would answer for it, with
        the IP of a ready pod it selects (None while it has none)."""
        ns, out = self.key[2], {}
        for (_, plural, n, name), svc in self.store.objects.items():
            if plural != "services" or n != ns:
                continue
            selector = (svc.get("spec") or {}).get("selector") or {}
            ready = [p["status"]["podIP"] for (_, pl, pn, _), p in self.store.objects.items()
                     if pl == "pods" and pn == ns and selector
                     and selector.items() <= (p["metadata"].get("labels") or {}).items()
                     and p.get("status", {}).get("podIP")
                     and any(c.get("type") == "Ready" and c.get("status") == "True"
                             for c in p["status"].get("conditions", []))]
            for host in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"):
                out[host] = ready[0] if ready else None
        return out

    def _hosts_in(self, text: str) -> set[str]:
        return {m.group(1) for m in re.finditer(r"//([a-z0-9.-]+)(?=[:/]|$)", text)}

    async def _wait_for_services(self, texts: list[str]) -> None:
        """Waits while a Service these name (``scheme://name:port``) has no ready pod: cluster
        DNS would answer, and the client would retry until it had one."""
        while not self.deleting.is_set():
            hosts = self._service_hosts()
            wanted = {h for t in texts for h in self._hosts_in(t) if h in hosts}
            if all(hosts[h] for h in wanted):
                return
            try:
                await asyncio.wait_for(self.deleting.wait(), 0.2)
            except TimeoutError:
                pass

    def _resolve(self, text: str, hosts: dict[str, str | None]) -> str:
        """``scheme://service...:port`` with the IP of a ready pod of that Service (``hosts``:
        ``_service_hosts``; what DNS and the Service's virtual IP do; a Service's port must be
        its pods' port here)."""
        return re.sub(r"//([a-z0-9.-]+)(?=[:/]|$)", lambda m: "//" + (hosts.get(m.group(1)) or m.group(1)), text)

    def _env(self, container: dict) -> dict[str, str]:
        ns, env = self.key[2], {}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind = "secretKeyRef" if "secretKeyRef" in ref else "configMapKeyRef"
                obj = self.store.objects.get(("v1", "secrets" if kind == "secretKeyRef" else "configmaps", ns,
                                              ref[kind]["name"]))
                data = (obj or {}).get("data") or {}
                if ref[kind]["key"] not in data:
                    raise ApiError(400, "CreateContainerConfigError",
                                   f"couldn't find key {ref[kind]['key']} in {ref[kind]['name']}")
                value = data[ref[kind]["key"]]
                env[e["name"]] = base64.b64decode(value).decode() if kind == "secretKeyRef" else value
            elif ref.get("fieldRef", {}).get("fieldPath") == "status.podIP":
                env[e["name"]] = self.ip
        return env

    async def _start(self, container: dict):
        pod = self.pod
        security = {**(pod["spec"].get("securityContext") or {}), **(container.get("securityContext") or {})}
        uid, gid = security.get("runAsUser", 0), security.get("runAsGroup", security.get("runAsUser", 0))
        fs_group = security.get("fsGroup")
        if security.get("runAsNonRoot") and uid == 0:
            raise ApiError(400, "CreateContainerConfigError", "container has runAsNonRoot and image will run as root")
        mounts = sorted(((m["mountPath"], self.mounts[m["name"]]) for m in container.get("volumeMounts", [])),
                        key=lambda m: -len(m[0]))
        given = self._env(container)
        argv = [expand(a, given) for a in [*container.get("command", []), *container.get("args", [])]]
        await self._wait_for_services([*argv, *given.values()])
        # what a container runtime gives every container (HOME: the image's user has none here)
        env = {"PATH": os.path.dirname(sys.executable) + ":/usr/local/bin:/usr/bin:/bin",
               "HOSTNAME": pod["metadata"]["name"], "LANG": "C.UTF-8", "HOME": "/"}
        hosts = self._service_hosts()
        env.update({k: self._resolve(self._rewrite(v, mounts), hosts) for k, v in given.items()})
        argv = [self._resolve(self._rewrite(a, mounts), hosts) for a in argv]
        cwd = self._rewrite(container.get("workingDir") or "/", mounts)
        groups = [fs_group] if fs_group is not None else []

        def become():
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        log = open(self.logs / f"{container['name']}.log", "ab")
        try:
            proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env, stdout=log, stderr=log,
                                                        stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
                                                        preexec_fn=become if uid else None)
        finally:
            log.close()
        self.procs[container["name"]] = proc
        self.state[container["name"]] = {"running": {"startedAt": now()}}
        self.ready[container["name"]] = "readinessProbe" not in container

    async def _start_all(self):
        try:
            for c in self.pod["spec"]["containers"]:
                await self._start(c)
        except (OSError, ApiError) as e:
            message = e.message if isinstance(e, ApiError) else f"failed to start container: {e}"
            await self._pending("Failed", message)
            return
        await self._report()

    async def _report(self):
        spec = self.pod["spec"]
        statuses = [{"name": c["name"], "image": c["image"], "imageID": f"standin://{c['image']}",
                     "containerID": f"standin://{self.key[3]}-{c['name']}", "ready": self.ready.get(c["name"], False),
                     "restartCount": self.restarts.get(c["name"], 0), "started": "running" in self.state[c["name"]],
                     "state": self.state[c["name"]]} for c in spec["containers"]]
        ready = all(s["ready"] for s in statuses)
        running = any("running" in s["state"] for s in statuses)
        done = [s["state"].get("terminated", {}).get("exitCode") for s in statuses]
        phase = "Running" if running else ("Succeeded" if all(x == 0 for x in done) else "Failed")
        await self.status(phase=phase, podIP=self.ip, podIPs=[{"ip": self.ip}], hostIP="127.0.0.1",
                          startTime=self.pod.get("status", {}).get("startTime") or now(), containerStatuses=statuses,
                          conditions=[{"type": t, "status": "True" if ok else "False", "lastTransitionTime": now()}
                                      for t, ok in (("PodScheduled", True), ("Initialized", True),
                                                    ("ContainersReady", ready), ("Ready", ready))])

    async def _probe(self, container: dict) -> bool:
        probe = container["readinessProbe"].get("httpGet")
        if not probe:
            return True
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)
        try:
            async with ClientSession(timeout=ClientTimeout(total=2)) as s, \
                    s.get(f"http://{self.ip}:{port}{probe.get('path', '/')}", allow_redirects=False) as r:
                return r.status < 400
        except Exception:
            return False

    async def _watch_processes(self):
        containers = {c["name"]: c for c in self.pod["spec"]["containers"]}
        policy = self.pod["spec"].get("restartPolicy", "Always")
        while not self.deleting.is_set() and self.procs:
            changed = False
            for name, proc in list(self.procs.items()):
                if proc.returncode is None and not self.ready[name] and await self._probe(containers[name]):
                    self.ready[name] = changed = True
                if proc.returncode is not None and "running" in self.state[name]:
                    self.state[name] = {"terminated": {"exitCode": proc.returncode, "finishedAt": now(),
                                                       "reason": "Completed" if proc.returncode == 0 else "Error"}}
                    self.ready[name], changed = False, True
                    if policy == "Always" or (policy == "OnFailure" and proc.returncode != 0):
                        self.restarts[name] = self.restarts.get(name, 0) + 1
                        await self._report()
                        await asyncio.sleep(1)
                        await self._start(containers[name])
            if changed:
                await self._report()
            if all(p.returncode is not None for p in self.procs.values()) and \
                    all("terminated" in s for s in self.state.values()):
                return
            try:
                await asyncio.wait_for(self.deleting.wait(), 0.2)
            except TimeoutError:
                pass

    async def _stop_all(self):
        live = [p for p in self.procs.values() if p.returncode is None]
        for p in live:
            with _gone():
                os.killpg(p.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), self.grace)
        except TimeoutError:
            pass
        for p in self.procs.values():
            with _gone():
                os.killpg(p.pid, signal.SIGKILL)  # the whole session: what the container started too
        await asyncio.gather(*(p.wait() for p in live), return_exceptions=True)


def expand(text: str, env: dict[str, str]) -> str:
    """``$(NAME)`` replaced by the container's variable NAME where it has one; ``$$`` is ``$``."""
    return re.sub(r"\$(\$|\(([A-Za-z_][A-Za-z0-9_]*)\))",
                  lambda m: "$" if m.group(1) == "$" else env.get(m.group(2), m.group(0)), text)


class _gone:
    """Ignores ProcessLookupError (the process or group is gone already)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is ProcessLookupError
