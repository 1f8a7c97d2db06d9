"""Deployments onto existing engines: `fleetinfer deploy render kubernetes|ecs`.

```
fleetinfer.toml ([node], [deploy]) + bench profile ─▶ settings.load_deployment ─▶ Deployment
Deployment ─▶ kubernetes.render (manifests + kustomization)  ─▶ render.write_files ─▶ DIR
Deployment ─▶ ecs.render (API request JSON)                  ─▶ render.write_files ─▶ DIR
```
The backlog target of both autoscalers comes from `fleetinfer.plan.policy`.
"""

from fleetinfer.deploy.render import TARGETS, render_files, write_files
from fleetinfer.deploy.settings import Deployment, DeploySettings, load_deployment

__all__ = [
    "TARGETS",
    "DeploySettings",
    "Deployment",
    "load_deployment",
    "render_files",
    "write_files",
]
