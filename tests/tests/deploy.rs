//! The deployment files say what the issue asks: DaemonSet fields, systemd unit, conflist.

use serde_yaml::Value;

fn docs() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kube-twill.yml"
    ))
    .unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

#[test]
fn daemonset_manifest_has_what_a_node_agent_needs() {
    let docs = docs();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]
    );
    let cm = &docs[2];
    let conflist: serde_json::Value =
        serde_json::from_str(cm["data"]["cni-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "twill");
    assert_eq!(conflist["plugins"][1]["type"], "portmap");
    let net: serde_json::Value =
        serde_json::from_str(cm["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(net["Backend"]["Type"], "vxlan");

    let ds = &docs[3];
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], Value::Bool(true));
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    assert!(
        spec["tolerations"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists")
    );
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], Value::Bool(false));
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(caps, ["NET_ADMIN", "NET_RAW"]);
    // Liveness must not depend on etcd: /healthz is 503 until a lease is held, and a liveness
    // probe on it restarts twilld for as long as etcd is out at start.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    // As in kube-flannel.yml: Linux nodes only.
    let terms = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert!(
        terms
            .as_sequence()
            .is_some_and(|t| t
                .iter()
                .any(|t| t["matchExpressions"]
                    .as_sequence()
                    .is_some_and(|m| m.iter().any(|e| e["key"] == "kubernetes.io/os"
                        && e["operator"] == "In"
                        && e["values"]
                            .as_sequence()
                            .is_some_and(|v| v.len() == 1 && v[0] == "linux"))))),
        "kubernetes.io/os: linux node affinity: {terms:?}"
    );
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for want in ["/run/flannel", "/dev/net/tun"] {
        assert!(mounts.contains(&want), "{want} not mounted: {mounts:?}");
    }
    let vols: Vec<&Value> = spec["volumes"].as_sequence().unwrap().iter().collect();
    let host_paths: Vec<&str> = vols
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for want in [
        "/run/flannel",
        "/etc/cni/net.d",
        "/opt/cni/bin",
        "/dev/net/tun",
    ] {
        assert!(host_paths.contains(&want), "{want} missing: {host_paths:?}");
    }
    assert!(
        vols.iter()
            .any(|v| v["secret"]["secretName"] == "twill-etcd-tls"),
        "etcd TLS secret reference"
    );
    let inits: Vec<String> = spec["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|i| format!("{:?}", i["command"]))
        .collect();
    // A plain cp onto a running `twill` fails "Text file busy" (a CNI call during a rollout)
    // and a runtime may read a half-written file: a copy to a temporary name in the target
    // directory, then a rename over the old file.
    for (tmp, dst) in [
        ("/opt/cni/bin/.twill.tmp", "/opt/cni/bin/twill"),
        (
            "/etc/cni/net.d/.10-twill.conflist.tmp",
            "/etc/cni/net.d/10-twill.conflist",
        ),
    ] {
        let script = spec["initContainers"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|i| i["command"].as_sequence())
            .filter_map(|c| c.last()?.as_str())
            .find(|s| s.contains(dst))
            .unwrap_or_else(|| panic!("no init container installs {dst}: {inits:?}"));
        assert!(
            script.contains("cp -f ")
                && script.contains(&format!(" {tmp} &&"))
                && script.contains(&format!("mv -f {tmp} {dst}")),
            "{dst} is not copied to {tmp} and renamed: {script}"
        );
    }
    assert!(
        inits.iter().any(|c| c.contains("/opt/cni/bin/twill")),
        "{inits:?}"
    );
    assert!(
        inits
            .iter()
            .any(|c| c.contains("/etc/cni/net.d/10-twill.conflist")),
        "{inits:?}"
    );
    // Every flag the DaemonSet passes exists.
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--ip-masq"),
        "the DaemonSet masquerades like Flannel's: {args:?}"
    );
    // TLS comes from optional ConfigMap keys, never from fixed flags: twilld refuses TLS
    // files with an http:// endpoint, so an etcd without TLS needs them gone, and deleting
    // keys from the ConfigMap is the one edit the manifest asks for.
    for a in &args {
        assert!(
            !a.starts_with("--etcd-cafile")
                && !a.starts_with("--etcd-certfile")
                && !a.starts_with("--etcd-keyfile"),
            "{a}: a fixed TLS flag breaks etcd without TLS"
        );
    }
    let env = c["env"].as_sequence().unwrap();
    // The healthz port in the environment, where `kubectl exec … twilld status` finds it too
    // (a flag of the daemon's is not seen by a command exec'd next to it).
    let healthz = env
        .iter()
        .find(|e| e["name"] == "TWILLD_HEALTHZ_PORT")
        .and_then(|e| e["value"].as_str())
        .expect("TWILLD_HEALTHZ_PORT in the container's env");
    assert!(
        args.iter().all(|a| !a.starts_with("--healthz-port")),
        "{args:?}"
    );
    // The scheduler's secure port (10259) and the other components' are taken on
    // control-plane nodes, which the DaemonSet tolerates: twilld would exit "Address already
    // in use" there.
    let taken = [
        2379, 2380, 2381, 6443, 10248, 10249, 10250, 10255, 10256, 10257, 10258, 10259,
    ];
    assert!(
        !taken.iter().any(|p| p.to_string() == healthz),
        "TWILLD_HEALTHZ_PORT {healthz} is a Kubernetes component's port"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["port"].as_u64().map(|p| p.to_string()),
            Some(healthz.to_string()),
            "{probe} asks the healthz port"
        );
    }
    for (var, key) in [
        ("TWILLD_ETCD_CAFILE", "etcd-cafile"),
        ("TWILLD_ETCD_CERTFILE", "etcd-certfile"),
        ("TWILLD_ETCD_KEYFILE", "etcd-keyfile"),
    ] {
        let e = env
            .iter()
            .find(|e| e["name"] == var)
            .unwrap_or_else(|| panic!("{var} not in the container's env"));
        let r = &e["valueFrom"]["configMapKeyRef"];
        assert_eq!(r["key"], key);
        assert_eq!(r["optional"], Value::Bool(true), "{var} must be optional");
        let path = cm["data"][key].as_str().unwrap();
        assert!(path.starts_with("/etc/twill/tls/"), "{key}: {path}");
    }
    assert!(
        mounts.contains(&"/var/run/wireguard"),
        "wg show on the node needs the UAPI sockets: {mounts:?}"
    );
    for a in args {
        let flag = a.split('=').next().unwrap();
        assert!(
            twilld_flags().contains(&flag.to_string()),
            "unknown twilld flag {flag}"
        );
    }
}

fn twilld_flags() -> Vec<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../agent/src/cli.rs"))
        .unwrap();
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split(':').next())
        .map(|f| format!("--{}", f.replace('_', "-")))
        .collect()
}

#[test]
fn systemd_unit_and_example_conflist() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/twilld.service"
    ))
    .unwrap();
    for want in [
        "Type=notify",
        "Restart=on-failure",
        "After=network-online.target",
        "ExecStart=/usr/local/bin/twilld",
    ] {
        assert!(unit.lines().any(|l| l.trim() == want), "{want} missing");
    }
    let c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/10-twill.conflist"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(c["plugins"][0]["type"], "twill");
}
