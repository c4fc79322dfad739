"""Checks every medops pod and pod template must pass (restricted Pod Security, limits, GPU)."""


def pod_violations(pod: dict, *, gpu: bool, secrets_from_env_from: bool = True) -> list[str]:
    """What a medops pod (or pod template) must have: requests and limits, restricted Pod Security,
    credentials only by reference to Secrets, GPU limit / node selector / toleration for training."""
    v = []
    spec = pod.get("spec", {})
    psc = spec.get("securityContext", {})
    if not psc.get("runAsNonRoot"):
        v.append("pod runAsNonRoot")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        v.append("pod seccompProfile RuntimeDefault")
    for c in spec.get("containers", []):
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append("allowPrivilegeEscalation false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            v.append("drop ALL capabilities")
        if not sc.get("readOnlyRootFilesystem"):
            v.append("readOnlyRootFilesystem")
        lim, req = c.get("resources", {}).get("limits", {}), c.get("resources", {}).get("requests", {})
        if not {"cpu", "memory"} <= set(lim) or not {"cpu", "memory"} <= set(req):
            v.append("cpu/memory requests and limits")
        if gpu and lim.get("nvidia.com/gpu") in (None, "0"):
            v.append("nvidia.com/gpu limit")
        for e in c.get("env", []):
            if any(k in e["name"].upper() for k in ("SECRET", "PASSWORD", "TOKEN", "KEY")) and "value" in e:
                v.append(f"credential {e['name']} inlined")
        if secrets_from_env_from and not any("secretRef" in e for e in c.get("envFrom", [])):
            v.append("credentials from Secrets (envFrom)")
    if gpu:
        if not spec.get("nodeSelector"):
            v.append("GPU nodeSelector")
        if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
            v.append("GPU toleration")
    if not any("emptyDir" in vol for vol in spec.get("volumes", [])):
        v.append("emptyDir scratch")
    return v
