"""The model registry: versions and their manifests, desired versions per node group, node status
and rollouts, all as plain objects in a folder (`file:///…`) or an S3 prefix (`s3://bucket/prefix`).

    store.py       the storage contract (`RegistryStore`) and its two backends
    registry.py    the layout on top of it: push, list, show, fetch (sha256-verified), desired,
                   node status, rollout state
    attributes.py  what a node is (arch, CPU features, accelerators, instance type, labels) and
                   group selectors over it; which compiled build a node runs
    reconcile.py   the node side: poll, download, verify, hot-reload, write status back
    rollout.py     staged rollout: canary choice, gates, the state machine and its controller

See docs/rollout.md.
"""
