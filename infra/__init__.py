"""Deployment files for rsvheat (container image, KubeRay manifests, cloud cluster-launcher configs) and the offline
checks that keep them valid: a strict walk of the KubeRay CRD schemas, the CEL rules they carry and the operator-side
rules KubeRay applies at admission (docs/infra.md)."""
