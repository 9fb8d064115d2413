// Package netns turns a network namespace inode number (the kernel's
// net->ns.inum, what conntrack events carry) into what a human knows: the
// host, a name from "ip netns add", a process, a container, a Kubernetes pod.
//
// A Resolver scans /proc/PID/ns/net of every process and the nsfs bind mounts
// in the netns directories, keeps the result, and answers Lookup from it.
// Container IDs and pod UIDs come from /proc/PID/cgroup (ParseCgroup); pod
// names and labels from a PodSource such as kube.PodInformer.
//
// # Labels and their cardinality
//
// Every label is a function of the namespace: a namespace has one value of
// each at a time, so together they add no series beyond one per namespace.
// A value that changes starts a new series, though, and namespaces come and
// go with pods:
//
//   - netns: the inode number. One per namespace. The kernel reuses numbers
//     of namespaces that are gone.
//   - netns_name: the name in /var/run/netns, "" if none. containerd and
//     CRI-O name pod namespaces cni-<uuid>, so one per pod there; Docker
//     names none.
//   - pod, pod_namespace: the pod whose processes are in the namespace,
//     at most the pods of a node (110 by default). Pods with hostNetwork
//     share the host's namespace and are never named.
//   - container: the 64-hex container ID of the namespace's lowest PID, for
//     a pod usually its sandbox ("pause") container. New when the sandbox is
//     recreated.
//   - comm: the command name (at most 15 bytes) of the lowest PID. Few
//     values, but it changes if that process execs or exits.
//   - pod labels: only allow-listed ones; as many values as they have.
//
// # What a DaemonSet needs
//
//   - The host's processes: hostPID: true (the container's /proc then shows
//     them), or the host's /proc mounted read-only, e.g. at /host/proc, with
//     Options.ProcRoot set to it. Host is the namespace of PID 1 there.
//   - Reading another process's /proc/PID/ns/net, even stat or readlink, is a
//     ptrace access check (PTRACE_MODE_READ_FSCREDS): it passes for a
//     dumpable process of our own fsuid whose permitted capabilities are no
//     more than ours, and otherwise only with CAP_SYS_PTRACE over the
//     process's user namespace. So: run as root with CAP_SYS_PTRACE. The
//     processes we may not read are skipped, with one warning. AppArmor and
//     SELinux can refuse it as well: the runtime's default AppArmor profile
//     allows ptrace only among its own peers, so run ctagent unconfined or
//     with a profile that allows "ptrace read".
//   - /proc/PID/comm and /proc/PID/cgroup are readable by anyone. The cgroup
//     paths are relative to ctagent's cgroup namespace ("/../../kubepods...");
//     ParseCgroup handles that, and /sys/fs/cgroup need not be mounted.
//   - Named namespaces: a hostPath volume for /var/run/netns (read-only is
//     enough) with mountPropagation: HostToContainer, or namespaces named
//     after ctagent started are invisible. Names count only if they are nsfs
//     bind mounts in ctagent's own mount namespace (/proc/self/mountinfo).
//     Add Docker's /run/docker/netns to NetnsDirs to name Docker's.
//   - Using a Namespace.Path is not this package's business, but: opening
//     /proc/PID/ns/net makes the same ptrace check, setns(CLONE_NEWNET) needs
//     CAP_SYS_ADMIN, and a conntrack dump inside needs CAP_NET_ADMIN.
//   - For pod names: RBAC to list and watch pods (cluster-wide; the informer
//     selects spec.nodeName), and NODE_NAME from the downward API
//     (fieldRef: spec.nodeName).
package netns
