"""A real single-node Kubernetes in a network and a mount namespace of its own, for the cluster tier.

The namespaces belong to one holder process (`unshare --net --mount`); every component joins them with
`nsenter`. Inside: lo and a veth pair holding the node IP, with a default route to that link where
nothing answers (no packet leaves); /run, /var/lib and /var/log of the node's own, the last two
bind-mounted from the work directory (the pods' log files are read there, as log agents read them).
The kubelet's cgroups are nested under the test's own. `stop()` ends every process, restores the
sysctls the kubelet changes, removes the cgroups, and checks that no process, mount, cgroup, iptables
rule or sysctl change is left on the host.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from support.paths import REPO
from support.processes import poll_until, stop_process, tail

NODE_NAME = "node"
NODE_IP = "10.200.0.1"
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "coredns",
)
# The global sysctls the kubelet sets at start (pkg/kubelet/cm: setupKernelTunables).
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
INSIDE = Path(__file__).with_name("inside.py")


def cluster_binary(name: str) -> Path:
    """A binary tests/cluster/build.sh builds (`make cluster-bin`)."""
    out = subprocess.run(
        ["bash", "tests/cluster/build.sh", "--print-path", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    path = Path(out.stdout.strip())
    assert os.access(path, os.X_OK), f"{name} is not built ({path}): run `make cluster-bin`"
    return path


# --- the host, before and after ----------------------------------------------------------------------


def host_mounts() -> set[tuple[str, str, str]]:
    """(mount point, file system type, source) of every mount the host's mount namespace has."""
    mounts = set()
    for line in Path("/proc/1/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        fstype, source = rest.split()[:2]
        mounts.add((fields.split()[4], fstype, source))
    return mounts


def host_iptables() -> str:
    """The host's iptables and ip6tables rules, without counters and timestamps."""
    dumps = []
    for command in ("iptables-save", "ip6tables-save"):
        out = subprocess.run([command], capture_output=True, text=True, check=True).stdout
        dumps.append(re.sub(r"\[\d+:\d+\]", "", "\n".join(x for x in out.splitlines() if x[:1] != "#")))
    return "\n".join(dumps)


def read_sysctls() -> dict[str, str]:
    return {name: Path("/proc/sys", name).read_text().strip() for name in KUBELET_SYSCTLS}


def namespace_of(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:  # gone, or a kernel thread
        return None


def pids_in_namespaces(namespaces: dict[str, str]) -> list[int]:
    """Processes in any of the namespaces, `{"net": "net:[4026...]", "mnt": ...}`."""
    return [
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and any(namespace_of(pid, kind) == ns for kind, ns in namespaces.items())
    ]


# --- cgroups -----------------------------------------------------------------------------------------


def cgroup_mounts() -> dict[str, str]:
    """Mount point of each cgroup hierarchy -> the key /proc/self/cgroup names it by."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        fstype, _, options = rest.split()[:3]
        if fstype == "cgroup2":
            mounts[fields.split()[4]] = ""
        elif fstype == "cgroup":
            controllers = [o for o in options.split(",") if o not in ("rw", "ro")]
            mounts[fields.split()[4]] = ",".join(controllers)
    return mounts


def own_cgroups() -> dict[str, str]:
    """Mount point of each hierarchy -> this process's cgroup in it."""
    by_key = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        by_key[controllers] = path
    return {mount: by_key[key] for mount, key in cgroup_mounts().items() if key in by_key}


def nested_cgroup_root(name: str) -> tuple[str, list[Path]]:
    """The kubelet's cgroupRoot: a new cgroup under this process's own in every hierarchy (the kubelet
    wants the same path in each). Returns the path and, per hierarchy, the topmost directory that does
    not exist yet (what creating it adds, and removing it takes away)."""
    own = own_cgroups()
    deepest = max(own.values(), key=len)
    outside = {mount: path for mount, path in own.items() if not deepest.startswith(path.rstrip("/") + "/")}
    outside = {mount: path for mount, path in outside.items() if path not in ("/", deepest)}
    assert not outside, f"this process's cgroups are not nested in one another: {own}"
    root = f"{deepest.rstrip('/')}/{name}"
    tops = []
    for mount in own:
        path = Path(mount + root)
        while not path.parent.exists():
            path = path.parent
        tops.append(path)
    return root, tops


def cgroup_pids(directories: list[Path]) -> set[int]:
    pids = set()
    for top in directories:
        for procs in top.rglob("cgroup.procs") if top.exists() else ():
            pids |= {int(pid) for pid in procs.read_text().split()}
    return pids


def remove_cgroups(directories: list[Path]) -> None:
    for top in directories:
        if top.exists():
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                path.rmdir()
            top.rmdir()


# --- certificates and configuration ------------------------------------------------------------------

OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = ${ENV::SAN}
"""

# name -> (subject, subject alternative names): the identities the components authenticate with.
CERTIFICATES = {
    "apiserver": (
        "/CN=kube-apiserver",
        f"IP:{NODE_IP},IP:{API_SERVICE_IP},IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
        f"DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.{CLUSTER_DOMAIN}",
    ),
    "apiserver-kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client", "DNS:client"),
    "admin": ("/O=system:masters/CN=admin", "DNS:admin"),
    "controller-manager": ("/CN=system:kube-controller-manager", "DNS:controller-manager"),
    "scheduler": ("/CN=system:kube-scheduler", "DNS:scheduler"),
    # The kubelet's client certificate, and its serving certificate: signed by the cluster CA, as a
    # kubelet-serving CSR approved under `serverTLSBootstrap` would be, so clients that trust the cluster
    # CA (the API server, metrics-server through its service account's ca.crt) verify the kubelet.
    "kubelet": (f"/O=system:nodes/CN=system:node:{NODE_NAME}", f"DNS:{NODE_NAME},IP:{NODE_IP}"),
    "kube-proxy": ("/CN=system:kube-proxy", "DNS:kube-proxy"),
}
# The aggregation layer's front proxy: the API server authenticates to aggregated API servers
# (metrics-server) with this client certificate, and they trust the user it names only from a
# certificate of this CA of its own (as kubeadm's front-proxy-ca): no cluster client certificate can
# pose as the front proxy.
FRONT_PROXY_CLIENT = "front-proxy-client"


def openssl(*args: str, env: dict | None = None) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"openssl {' '.join(args)} failed:\n{result.stderr}"


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True)
    config = pki / "openssl.cnf"
    config.write_text(OPENSSL_CONFIG)

    def certificate(name: str, subject: str, sans: str, extension: str, *signer: str) -> None:
        """A self-signed certificate (the CA) or one `signer` signs, with its new EC key, for 2 days."""
        openssl(
            "req",
            "-x509",
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *signer,
            *("-config", str(config), "-extensions", extension, "-days", "2", "-subj", subject),
            *("-keyout", str(pki / f"{name}.key"), "-out", str(pki / f"{name}.crt")),
            env={**os.environ, "SAN": sans},
        )

    certificate("ca", "/CN=newsgroups-cluster-ca", "DNS:ca", "ca")
    signed_by_ca = ("-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"))
    for name, (subject, sans) in CERTIFICATES.items():
        certificate(name, subject, sans, "leaf", *signed_by_ca)
    certificate("front-proxy-ca", "/CN=newsgroups-front-proxy-ca", "DNS:front-proxy-ca", "ca")
    front_proxy_ca = ("-CA", str(pki / "front-proxy-ca.crt"), "-CAkey", str(pki / "front-proxy-ca.key"))
    certificate(FRONT_PROXY_CLIENT, f"/CN={FRONT_PROXY_CLIENT}", "DNS:front-proxy", "leaf", *front_proxy_ca)
    openssl("genpkey", "-algorithm", "RSA", "-out", str(pki / "service-account.key"))
    openssl(
        "pkey", "-in", str(pki / "service-account.key"), "-pubout", "-out", str(pki / "service-account.pub")
    )


def kubeconfig(pki: Path, user: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "node",
                "cluster": {
                    "server": f"https://{NODE_IP}:6443",
                    "certificate-authority": str(pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki / f"{user}.crt"),
                    "client-key": str(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "node", "context": {"cluster": "node", "user": user}}],
        "current-context": "node",
    }


def containerd_config(work: Path) -> str:
    return f"""\
version = 2
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM's bounding set lacks CAP_SYS_RESOURCE: runc may not lower a container's oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{work}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"""


def cni_config() -> dict:
    return {
        "cniVersion": "0.4.0",
        "name": "pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(work: Path, cgroup_root: str) -> dict:
    pki = work / "pki"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        # Served with the certificate the cluster CA signed (make_pki), not a self-signed one.
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        # This VM has cgroup v1 (hybrid); kubelet 1.35 runs on it only when told to.
        "failCgroupV1": False,
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(work / "resolv.conf"),
        "failSwapOn": False,
        # Other developers' builds share the disk: no eviction or image removal because of them.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
    }


def corefile(work: Path) -> str:
    return f"""\
.:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {work}/admin.kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
"""


# --- the cluster -------------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class Cluster:
    """The node and its control plane; `kubectl`, `helm` and `in_netns` run clients inside."""

    work: Path
    binaries: dict[str, Path]
    pause_archive: Path
    holder: subprocess.Popen | None = None
    components: list[Component] = field(default_factory=list)
    namespaces: dict[str, str] = field(default_factory=dict)
    cgroup_root: str = ""
    cgroup_dirs: list[Path] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    mounts: set = field(default_factory=set)
    iptables: str = ""

    # -- clients

    @property
    def kubeconfig(self) -> Path:
        return self.work / "admin.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        """/var/log/pods as the node sees it."""
        return self.work / "var-log" / "pods"

    def enter(self) -> list[str]:
        """The command prefix that joins the node's namespaces."""
        return ["nsenter", f"--target={self.holder.pid}", "--net", "--mount"]

    def in_netns(self, *command, check: bool = True, timeout: float = 120, **kwargs):
        result = subprocess.run(
            [*self.enter(), *map(str, command)], capture_output=True, text=True, timeout=timeout, **kwargs
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def kubectl(self, *args, check: bool = True, timeout: float = 120, **kwargs):
        kubectl = (self.binaries["kubectl"], "--kubeconfig", self.kubeconfig)
        return self.in_netns(*kubectl, *args, check=check, timeout=timeout, **kwargs)

    def helm(self, helm: Path, *args, check: bool = True, timeout: float = 300):
        env = {
            **os.environ,
            **{f"HELM_{d}_HOME": str(self.work / "helm" / d) for d in ("CACHE", "CONFIG", "DATA")},
        }
        return self.in_netns(
            helm, "--kubeconfig", self.kubeconfig, *args, check=check, timeout=timeout, env=env
        )

    def curl(self, *args, check: bool = True, timeout: float = 60):
        """curl inside the node's network namespace (the Service's cluster address is reachable there)."""
        return self.in_netns(
            "curl", "--silent", "--show-error", "--max-time", "30", *args, check=check, timeout=timeout
        )

    def import_image(self, archive: Path) -> None:
        """Import an image archive into the node's containerd, where the kubelet finds it."""
        self.in_netns("ctr", "--namespace", "k8s.io", "images", "import", archive, timeout=600)

    def install_release(self, helm: Path, release, *overlays: Path, timeout: str = "5m") -> None:
        """`helm upgrade --install` of a charts.Release as `make cluster-up` runs it (its packaged
        chart, our values, its --set options), then each test-only values overlay (image names, pull
        policy, storage)."""
        values = [arg for path in (release.values_path, *overlays) for arg in ("--values", path)]
        self.helm(
            helm,
            "upgrade",
            "--install",
            release.name,
            release.packaged_chart,
            "--namespace",
            release.namespace,
            "--create-namespace",
            *values,
            *release.settings,
            "--wait",
            "--timeout",
            timeout,
            timeout=600,
        )

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"--- {c.name} ({c.log}) ---\n{tail(c.log, lines)}" for c in self.components)

    # -- start

    def start(self) -> None:
        self.mounts, self.iptables, self.sysctls = host_mounts(), host_iptables(), read_sysctls()
        for directory in ("logs", "etcd", "containerd", "cni/net.d", "var-lib", "var-log/pods", "helm"):
            (self.work / directory).mkdir(parents=True, exist_ok=True)
        make_pki(self.work / "pki")
        self.write_configs()
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "sleep", "infinity"],
            start_new_session=True,
        )
        poll_until(
            lambda: namespace_of(self.holder.pid, "net") != namespace_of(os.getpid(), "net"),
            timeout=10,
            what="the node's namespaces",
        )
        self.namespaces = {kind: namespace_of(self.holder.pid, kind) for kind in ("net", "mnt")}
        self.setup_namespaces()
        self.cgroup_root, self.cgroup_dirs = nested_cgroup_root(f"newsgroups-cluster-{os.getpid()}")
        for mount in own_cgroups():
            Path(mount + self.cgroup_root).mkdir(parents=True)
        self.start_control_plane()
        self.start_node()

    def write_configs(self) -> None:
        pki = self.work / "pki"
        for user in ("admin", "controller-manager", "scheduler", "kubelet", "kube-proxy"):
            (self.work / f"{user}.kubeconfig").write_text(yaml.safe_dump(kubeconfig(pki, user)))
        (self.work / "containerd" / "config.toml").write_text(containerd_config(self.work))
        (self.work / "cni" / "net.d" / "10-pods.conflist").write_text(json.dumps(cni_config()))
        (self.work / "resolv.conf").write_text(f"nameserver {NODE_IP}\n")
        (self.work / "Corefile").write_text(corefile(self.work))

    def setup_namespaces(self) -> None:
        steps = [
            "ip link set lo up",
            "ip link add node0 type veth peer name node0-peer",
            f"ip addr add {NODE_IP}/24 dev node0",
            "ip link set node0 up",
            "ip link set node0-peer up",
            # A default route (a connection to a Service's address is routed before it is rewritten):
            # nothing answers on node0's link, so no packet it routes goes anywhere.
            "ip route add default dev node0",
            # The node's /run (containerd's state and shim sockets), /var/lib (containerd's images, the
            # kubelet's pods, CNI's leases) and /var/log (the pods' logs) are its own, in the work directory.
            "mount -t tmpfs -o mode=0755 tmpfs /run",
            f"mount --bind {self.work / 'var-lib'} /var/lib",
            f"mount --bind {self.work / 'var-log'} /var/log",
        ]
        for step in steps:
            self.in_netns(*step.split())

    def run(self, name: str, *command) -> Component:
        log = self.work / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [*self.enter(), *map(str, command)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.work,
                start_new_session=True,
            )
        component = Component(name, process, log)
        self.components.append(component)
        return component

    def wait_for(self, check, what: str, timeout: float = 90) -> None:
        def alive_and(check=check):
            for component in self.components:
                if component.process.poll() is not None:
                    raise AssertionError(f"{component.name} exited with {component.process.returncode}")
            return check()

        try:
            poll_until(alive_and, timeout=timeout, interval=0.5, what=what)
        except AssertionError as exc:
            raise AssertionError(f"the cluster did not start: {exc}\n{self.logs()}") from None

    def start_control_plane(self) -> None:
        pki, bins = self.work / "pki", self.binaries
        self.run(
            "etcd",
            bins["etcd"],
            "--name",
            NODE_NAME,
            "--data-dir",
            self.work / "etcd",
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            f"{NODE_NAME}=http://127.0.0.1:2380",
            "--unsafe-no-fsync",
        )
        self.run(
            "kube-apiserver",
            bins["kube-apiserver"],
            "--etcd-servers=http://127.0.0.1:2379",
            f"--advertise-address={NODE_IP}",
            "--bind-address=0.0.0.0",
            "--secure-port=6443",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--client-ca-file={pki}/ca.crt",
            f"--tls-cert-file={pki}/apiserver.crt",
            f"--tls-private-key-file={pki}/apiserver.key",
            f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
            # The kubelet's serving certificate is the cluster CA's: logs, exec and proxied scrapes verify it.
            f"--kubelet-certificate-authority={pki}/ca.crt",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-account-key-file={pki}/service-account.pub",
            f"--service-account-signing-key-file={pki}/service-account.key",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # Privileged pods are allowed by the server, so Pod Security admission is what refuses them.
            "--allow-privileged=true",
            "--profiling=false",
            # The aggregation layer (metrics-server's metrics.k8s.io): requests proxied to an aggregated
            # API server carry the user in these headers, authenticated by the front proxy's certificate.
            # The API server reaches metrics-server through its Service's cluster IP: kube-proxy's rules
            # apply in the node's network namespace, where the API server runs (no
            # --enable-aggregator-routing needed).
            f"--requestheader-client-ca-file={pki}/front-proxy-ca.crt",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki}/{FRONT_PROXY_CLIENT}.crt",
            f"--proxy-client-key-file={pki}/{FRONT_PROXY_CLIENT}.key",
        )
        self.wait_for(
            lambda: self.kubectl("get", "--raw", "/readyz", check=False).stdout == "ok", "the API server"
        )
        self.run(
            "kube-controller-manager",
            bins["kube-controller-manager"],
            f"--kubeconfig={self.work}/controller-manager.kubeconfig",
            f"--authentication-kubeconfig={self.work}/controller-manager.kubeconfig",
            f"--authorization-kubeconfig={self.work}/controller-manager.kubeconfig",
            f"--service-account-private-key-file={pki}/service-account.key",
            f"--root-ca-file={pki}/ca.crt",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
        )
        self.run(
            "kube-scheduler",
            bins["kube-scheduler"],
            f"--kubeconfig={self.work}/scheduler.kubeconfig",
            f"--authentication-kubeconfig={self.work}/scheduler.kubeconfig",
            f"--authorization-kubeconfig={self.work}/scheduler.kubeconfig",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--profiling=false",
        )

    def start_node(self) -> None:
        bins = self.binaries
        self.run("containerd", "containerd", "--config", self.work / "containerd" / "config.toml")
        socket = Path(f"/proc/{self.holder.pid}/root/run/containerd/containerd.sock")
        self.wait_for(socket.exists, "containerd's socket")
        self.import_image(self.pause_archive)
        (self.work / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(self.work, self.cgroup_root)))
        self.run(
            "kubelet",
            bins["kubelet"],
            "--config",
            self.work / "kubelet.yaml",
            "--kubeconfig",
            self.work / "kubelet.kubeconfig",
            "--hostname-override",
            NODE_NAME,
            "--node-ip",
            NODE_IP,
        )
        self.run(
            "kube-proxy",
            bins["kube-proxy"],
            f"--kubeconfig={self.work}/kube-proxy.kubeconfig",
            "--proxy-mode=iptables",
            f"--hostname-override={NODE_NAME}",
            f"--cluster-cidr={POD_CIDR}",
            # Global conntrack tunables stay as they are.
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--metrics-bind-address=127.0.0.1:10249",
            "--healthz-bind-address=127.0.0.1:10256",
        )
        self.run("coredns", bins["coredns"], "-conf", self.work / "Corefile")
        self.wait_for(self.node_ready, "the node to be Ready", timeout=120)
        name = f"kubernetes.default.svc.{CLUSTER_DOMAIN}"
        self.wait_for(lambda: API_SERVICE_IP in self.dns(name), f"CoreDNS to answer for {name}")
        self.wait_for(
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            "the default service account",
        )

    def node_ready(self) -> bool:
        jsonpath = '{.status.conditions[?(@.type=="Ready")].status}'
        return (
            self.kubectl("get", "node", NODE_NAME, "-o", f"jsonpath={jsonpath}", check=False).stdout == "True"
        )

    def dns(self, name: str) -> list[str]:
        result = self.in_netns(sys.executable, INSIDE, "dns", name, NODE_IP, check=False, timeout=10)
        return result.stdout.split()

    # -- stop

    def stop(self) -> None:
        """End everything, restore the host, and check nothing is left (AssertionError if something is)."""
        order = ["kube-proxy", "coredns", "kube-scheduler", "kube-controller-manager", "kubelet"]
        for name in order:
            self.terminate(name)
        for pid in cgroup_pids(self.cgroup_dirs):  # the pods' processes
            kill(pid)
        self.terminate("containerd")
        if self.holder:
            for pid in pids_in_namespaces(self.namespaces):  # containerd's shims
                if pid != self.holder.pid:
                    kill(pid)
        self.terminate("kube-apiserver")  # before etcd: it hangs otherwise
        self.terminate("etcd")
        if self.holder:
            self.holder.kill()
            self.holder.wait()
        for name, value in self.sysctls.items():
            if Path("/proc/sys", name).read_text().strip() != value:
                Path("/proc/sys", name).write_text(value)
        poll_until(lambda: not cgroup_pids(self.cgroup_dirs), timeout=30, what="the pods' processes to end")
        remove_cgroups(self.cgroup_dirs)
        self.verify_teardown()

    def terminate(self, name: str, timeout: float = 30) -> None:
        for component in self.components:
            if component.name == name:
                stop_process(component.process, timeout)

    def leftovers(self) -> list[str]:
        left = []
        if self.namespaces:
            pids = pids_in_namespaces(self.namespaces)
            left += [f"process {pid} in the node's namespaces" for pid in pids]
        left += [f"cgroup {d}" for d in self.cgroup_dirs if d.exists()]
        left += [f"mount {m}" for m in sorted(host_mounts() - self.mounts)]
        if host_iptables() != self.iptables:
            left.append("the host's iptables rules changed")
        left += [
            f"sysctl {k} = {v}, was {self.sysctls[k]}"
            for k, v in read_sysctls().items()
            if v != self.sysctls[k]
        ]
        return left

    def verify_teardown(self) -> None:
        try:
            poll_until(lambda: not self.leftovers(), timeout=20, what="the cluster to be gone")
        except AssertionError:
            raise AssertionError("the cluster's teardown left: " + "; ".join(self.leftovers())) from None


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_on_sigterm() -> None:
    """Make SIGTERM interrupt the run like Ctrl-C, so pytest's teardown (the cluster's) runs."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
