"""The Kubernetes backend: the same micro-infrastructure, profiles and Dask clusters as the
local backend, made of Kubernetes objects.

- :mod:`.objects`: pure functions from one typed spec (:class:`.objects.ServerSpec`,
  :class:`.objects.ClusterSpec`) to the objects' dicts (pod, secret, claim, network policy,
  the dask-kubernetes custom resources); nothing there talks to an API server;
- :mod:`.spawner`: ``SkerryKubeSpawner``, which has KubeSpawner create them for each start.
"""
