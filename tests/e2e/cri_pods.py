#!/usr/bin/env python3
"""Drives containerd's CRI plugin the way kubelet does: two pod sandboxes, a container in each,
pings between them and to a remote address, then stop and remove (which makes containerd run
CNI DEL twice per pod). Prints one JSON object with what it saw.

usage: cri_pods.py SOCKET IMAGE CGROUP_PARENT LOG_DIR REMOTE_IP
"""

import json
import sys

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pbg


def main():
    sock, image, cgroup_parent, log_dir, remote_ip = sys.argv[1:6]
    rt = pbg.RuntimeServiceStub(grpc.insecure_channel("unix://" + sock))
    out = {"pods": [], "errors": []}
    sandboxes = []
    try:
        for name in ("a", "b"):
            cfg = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(name="podnet-" + name, uid="uid-" + name, namespace="podnet-test"),
                hostname="podnet-" + name,
                log_directory=log_dir,
                dns_config=pb.DNSConfig(servers=["10.96.0.10"], searches=["podnet-test.svc.cluster.local"]),
                linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
            )
            sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
            sandboxes.append(sid)
            status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True), timeout=30)
            ctr = rt.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=sid,
                    config=pb.ContainerConfig(
                        metadata=pb.ContainerMetadata(name="main"),
                        image=pb.ImageSpec(image=image),
                        command=["/bin/sleep", "3600"],
                        log_path=name + ".log",
                    ),
                    sandbox_config=cfg,
                ),
                timeout=60,
            ).container_id
            rt.StartContainer(pb.StartContainerRequest(container_id=ctr), timeout=60)
            info = json.loads(status.info.get("info", "{}"))
            netns = ""
            for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
                if ns.get("type") == "network":
                    netns = ns.get("path", "")
            out["pods"].append({"name": name, "sandbox": sid, "ip": status.status.network.ip, "container": ctr, "netns": netns})

        def run(ctr, *cmd):
            r = rt.ExecSync(pb.ExecSyncRequest(container_id=ctr, cmd=list(cmd), timeout=10), timeout=30)
            return {"exit": r.exit_code, "stdout": r.stdout.decode(errors="replace"), "stderr": r.stderr.decode(errors="replace")}

        a, b = out["pods"]
        out["a_to_b"] = run(a["container"], "ping", "-c1", "-W2", b["ip"])
        out["b_to_a"] = run(b["container"], "ping", "-c1", "-W2", a["ip"])
        out["a_to_remote"] = run(a["container"], "ping", "-c1", "-W2", remote_ip)
        out["a_addr"] = run(a["container"], "ip", "-o", "-4", "addr", "show", "eth0")
    except grpc.RpcError as e:
        out["errors"].append("%s: %s" % (e.code(), e.details()))
    finally:
        for sid in sandboxes:
            try:
                rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
                rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
            except grpc.RpcError as e:
                out["errors"].append("teardown %s: %s: %s" % (sid, e.code(), e.details()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
