"""The controllers of tests/kubeapi.py's stand-in cluster that the dask-kubernetes operator
relies on: Deployments keep their number of pods, and report how many are ready.

A Deployment's pods are made from its template (named ``<deployment>-<10 hex>-<5 hex>``,
labelled ``pod-template-hash``, owned by the Deployment: deleting it deletes them), made or
deleted to match ``spec.replicas`` at each change of the Deployment or of one of its pods;
its ``status`` says ``replicas``, ``readyReplicas``, ``availableReplicas``, ``updatedReplicas``
and ``observedGeneration``. There are no ReplicaSets (nobody here asks for them), and a
change of the template is not rolled out to running pods.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import uuid

from kubeapi import Store

APPS = "apps/v1"


class Deployments:
    def __init__(self, store: Store):
        self.store = store
        self.pending: set[tuple] = set()
        store.hooks.append(self.changed)

    def changed(self, kind, key, obj):
        if key[0] == APPS and key[1] == "deployments" and kind != "DELETED":
            self._soon(key)
        elif key[1] == "pods":
            for ref in obj["metadata"].get("ownerReferences", []):
                if ref.get("kind") == "Deployment":
                    self._soon((APPS, "deployments", key[2], ref["name"]))

    def _soon(self, key):
        """A reconcile of ``key`` after the change being made (hooks run inside the store's)."""
        if key not in self.pending:
            self.pending.add(key)
            asyncio.ensure_future(self.reconcile(key))

    def _owned(self, deployment: dict) -> list[dict]:
        uid, ns = deployment["metadata"]["uid"], deployment["metadata"]["namespace"]
        return [p for (_, plural, n, _), p in self.store.objects.items()
                if plural == "pods" and n == ns and "deletionTimestamp" not in p["metadata"]
                and any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences", []))]

    async def reconcile(self, key):
        self.pending.discard(key)
        deployment = self.store.objects.get(key)
        if deployment is None:
            return
        spec, ns = deployment.get("spec", {}), key[2]
        template = spec.get("template", {})
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        pods = self._owned(deployment)
        wanted = spec.get("replicas", 1)
        for pod in pods[wanted:]:
            await self.store.delete("v1", "pods", ns, pod["metadata"]["name"], graceful=30)
        for _ in range(wanted - len(pods)):
            meta = copy.deepcopy(template.get("metadata") or {})
            meta["name"] = f"{key[3]}-{digest}-{uuid.uuid4().hex[:5]}"
            meta["labels"] = {**(meta.get("labels") or {}), "pod-template-hash": digest}
            meta["ownerReferences"] = [{"apiVersion": APPS, "kind": "Deployment", "name": key[3],
                                        "uid": deployment["metadata"]["uid"], "controller": True}]
            await self.store.create("v1", "pods", ns, {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                                                       "spec": copy.deepcopy(template.get("spec") or {})})
        pods = self._owned(deployment)
        ready = sum(any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in p.get("status", {}).get("conditions", [])) for p in pods)
        status = {"replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready,
                  "updatedReplicas": len(pods), "observedGeneration": deployment["metadata"].get("generation", 1)}
        if deployment.get("status") != status and key in self.store.objects:
            await self.store.patch(*key, {"status": status}, status_only=True)
