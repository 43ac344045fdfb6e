//! The deployment files in `deploy/` use only flags, ports and paths the binary and the
//! config parser accept: a renamed flag, a moved port or a path that no longer lines up
//! with the cluster file breaks this test, not a deployment.
//!
//! There is no container runtime here, so nothing is built or started: each command line
//! is parsed by the real clap definition, each cluster file by the real parser, and the
//! addresses, ports, volumes and health checks are checked against them. The Kubernetes
//! manifests are also validated against the API's own OpenAPI schemas (strict: an unknown
//! or misspelt field fails) by `kubernetes-validate`, installed from PyPI into
//! `RAFTLOG_K8S_VALIDATE_CACHE` (default `target/k8s-validate-cache`) when missing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use raftlog::config::ClusterConfig;
use serde::Deserialize;
use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Parses `args` (without the program name) as the binary would, or panics naming `origin`.
fn parse_command_line(origin: &str, args: &[String]) {
    let argv = std::iter::once("raftlog".to_string()).chain(args.iter().cloned());
    if let Err(e) = raftlog::cli::Cli::try_parse_from(argv) {
        panic!(
            "{origin}: `raftlog {}` is refused by the binary's command line:\n{e}",
            args.join(" ")
        );
    }
}

/// The value after `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn strings(value: &Value, origin: &str) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{origin}: expected a list"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{origin}: expected strings, got {v:?}"))
                .to_string()
        })
        .collect()
}

/// The Dockerfile's instructions, `INSTRUCTION -> [arguments]`, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() && current.is_empty() {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (instruction, rest) = current.split_once(' ').unwrap_or((&current, ""));
        joined.push((instruction.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    joined
}

fn dockerfile_one(instructions: &[(String, String)], name: &str) -> String {
    let found: Vec<&String> = instructions
        .iter()
        .filter(|(i, _)| i == name)
        .map(|(_, a)| a)
        .collect();
    // The runtime stage is the last; a later instruction wins, as in Docker.
    found
        .last()
        .unwrap_or_else(|| panic!("deploy/Dockerfile has no {name}"))
        .to_string()
}

fn json_array(text: &str, origin: &str) -> Vec<String> {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{origin}: `{text}` is not an exec-form JSON array: {e}"))
}

#[test]
fn dockerfile_runs_the_binary_as_a_non_root_user_with_its_data_in_a_volume() {
    let instructions = dockerfile();
    let stages = instructions.iter().filter(|(i, _)| i == "FROM").count();
    assert!(
        stages >= 2,
        "deploy/Dockerfile: expected a multi-stage build, found {stages} FROM"
    );
    let user = dockerfile_one(&instructions, "USER");
    assert!(
        user != "root" && user != "0",
        "deploy/Dockerfile runs as {user}"
    );
    let entrypoint = json_array(&dockerfile_one(&instructions, "ENTRYPOINT"), "ENTRYPOINT");
    assert_eq!(entrypoint, ["raftlog"], "deploy/Dockerfile: ENTRYPOINT");
    let cmd = json_array(&dockerfile_one(&instructions, "CMD"), "CMD");
    parse_command_line("deploy/Dockerfile CMD", &cmd);
    let volume = dockerfile_one(&instructions, "VOLUME");
    assert_eq!(volume, "/var/lib/raftlog", "deploy/Dockerfile: VOLUME");
    let health = dockerfile_one(&instructions, "HEALTHCHECK");
    assert!(
        health.contains("/readyz") && health.contains("${RAFTLOG_API_ADDR}"),
        "deploy/Dockerfile: HEALTHCHECK must ask /readyz on RAFTLOG_API_ADDR: {health}"
    );
    let exposed = dockerfile_one(&instructions, "EXPOSE");
    let compose_config = compose_config();
    for addrs in compose_config.nodes().values() {
        for port in [addrs.raft_addr.port(), addrs.api_addr.port()] {
            assert!(
                exposed.split_whitespace().any(|p| p == port.to_string()),
                "deploy/Dockerfile: EXPOSE {exposed} lacks port {port} of deploy/compose/config.json"
            );
        }
    }
}

fn compose() -> Value {
    let mut value: Value = serde_yaml::from_str(&read("deploy/compose/docker-compose.yml"))
        .expect("deploy/compose/docker-compose.yml is YAML");
    value
        .apply_merge()
        .expect("the compose file's << merges apply");
    value
}

fn compose_config() -> ClusterConfig {
    let path = repo().join("deploy/compose/config.json");
    ClusterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// What a compose service runs.
#[derive(Debug)]
struct ComposeNode {
    service: String,
    command: Vec<String>,
    ipv4_address: String,
    /// Mount target -> source.
    volumes: BTreeMap<String, String>,
}

fn compose_nodes(compose: &Value) -> Vec<ComposeNode> {
    let services = compose["services"]
        .as_mapping()
        .expect("the compose file has services");
    services
        .iter()
        .map(|(name, service)| {
            let service_name = name
                .as_str()
                .expect("service names are strings")
                .to_string();
            let origin = format!("docker-compose.yml: services.{service_name}");
            let command = strings(&service["command"], &format!("{origin}.command"));
            let ipv4_address = service["networks"]["raftlog"]["ipv4_address"]
                .as_str()
                .unwrap_or_else(|| panic!("{origin}: no networks.raftlog.ipv4_address"))
                .to_string();
            let volumes = strings(&service["volumes"], &format!("{origin}.volumes"))
                .iter()
                .map(|v| {
                    let mut parts = v.split(':');
                    let source = parts.next().unwrap_or_default().to_string();
                    let target = parts
                        .next()
                        .unwrap_or_else(|| panic!("{origin}: volume {v} has no target"))
                        .to_string();
                    (target, source)
                })
                .collect();
            ComposeNode {
                service: service_name,
                command,
                ipv4_address,
                volumes,
            }
        })
        .collect()
}

#[test]
fn compose_file_runs_five_nodes_whose_flags_addresses_and_paths_match_the_binary_and_config() {
    let compose = compose();
    let nodes = compose_nodes(&compose);
    assert_eq!(
        nodes.len(),
        5,
        "deploy/compose/docker-compose.yml: expected five nodes"
    );
    let config = compose_config();
    for node in ["node1", "node2", "node3", "node4", "node5"] {
        // RLIMIT_NICE r allows nice values down to 20 - r (setrlimit(2)).
        assert_eq!(
            compose["services"][node]["ulimits"]["nice"].as_i64(),
            Some(20 - i64::from(config.raft_thread_nice())),
            "{node}: ulimits.nice must let the non-root user take raft_thread_nice"
        );
    }
    let subnet = compose["networks"]["raftlog"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .expect("the raftlog network has a subnet");
    let subnet_prefix = subnet
        .strip_suffix(".0/24")
        .unwrap_or_else(|| panic!("expected a /24 subnet, got {subnet}"));
    let mut ids = Vec::new();
    for node in &nodes {
        let origin = format!("docker-compose.yml: services.{}", node.service);
        parse_command_line(&origin, &node.command);
        assert_eq!(
            node.command.first().map(String::as_str),
            Some("serve"),
            "{origin}"
        );
        let id: u64 = flag_value(&node.command, "--id")
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("{origin}: no numeric --id"));
        ids.push(id);
        config
            .validate_node_id(id)
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        let addrs = config.node(id).expect("validated above");
        // The node binds its configured addresses, so they must be this container's.
        for (what, addr) in [("raft_addr", addrs.raft_addr), ("api_addr", addrs.api_addr)] {
            assert_eq!(
                addr.ip().to_string(),
                node.ipv4_address,
                "{origin}: ipv4_address differs from nodes.\"{id}\".{what} in config.json"
            );
        }
        assert!(
            node.ipv4_address.starts_with(&format!("{subnet_prefix}.")),
            "{origin}: {} is outside the network's subnet {subnet}",
            node.ipv4_address
        );
        // The cluster file is mounted where --config looks, and is this one.
        let config_flag = flag_value(&node.command, "--config").expect("--config given");
        assert_eq!(
            node.volumes.get(config_flag).map(String::as_str),
            Some("./config.json"),
            "{origin}: --config {config_flag} is not the mounted deploy/compose/config.json"
        );
        // The data volume is the config's data_dir, and the Dockerfile's VOLUME.
        let data_dir = config.data_dir().to_string_lossy().to_string();
        let data_source = node
            .volumes
            .get(&data_dir)
            .unwrap_or_else(|| panic!("{origin}: no volume mounted at data_dir {data_dir}"));
        assert!(
            compose["volumes"].get(data_source.as_str()).is_some(),
            "{origin}: the data volume {data_source} is not declared under volumes"
        );
        let service = &compose["services"][node.service.as_str()];
        let published = strings(&service["ports"], &format!("{origin}.ports"));
        assert!(
            published
                .iter()
                .any(|p| p.ends_with(&format!(":{}", addrs.api_addr.port()))),
            "{origin}: ports {published:?} do not publish the API port {}",
            addrs.api_addr.port()
        );
        let health_addr = service["environment"]["RAFTLOG_API_ADDR"].as_str();
        assert_eq!(
            health_addr,
            Some(addrs.api_addr.to_string().as_str()),
            "{origin}: RAFTLOG_API_ADDR (the HEALTHCHECK's target) is not the node's api_addr"
        );
    }
    ids.sort();
    let configured: Vec<u64> = config.nodes().keys().copied().collect();
    assert_eq!(ids, configured, "every configured node runs, once");
}

#[test]
fn systemd_unit_starts_the_node_named_by_its_instance() {
    let unit = read("deploy/systemd/raftlog@.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("deploy/systemd/raftlog@.service has ExecStart");
    let mut args: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    assert!(
        args.remove(0).ends_with("/raftlog"),
        "ExecStart runs raftlog: {exec}"
    );
    assert_eq!(
        flag_value(&args, "--id"),
        Some("%i"),
        "the instance name is the node id"
    );
    let with_id: Vec<String> = args.iter().map(|a| a.replace("%i", "3")).collect();
    parse_command_line("deploy/systemd/raftlog@.service ExecStart", &with_id);
    let state = unit
        .lines()
        .find_map(|l| l.strip_prefix("StateDirectory="))
        .expect("a StateDirectory for the data");
    assert_eq!(state, "raftlog", "the data lives in /var/lib/raftlog");
    assert!(
        unit.contains("RestartPreventExitStatus=2"),
        "a configuration error (exit 2) must not be restarted in a loop"
    );
    // The unit runs as a plain user: RLIMIT_NICE is what lets it raise the raft thread.
    let nice = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNICE="))
        .expect("LimitNICE, so that the service user may raise the raft thread's priority");
    assert_eq!(
        nice,
        raftlog::config::DEFAULT_RAFT_THREAD_NICE.to_string(),
        "LimitNICE must allow the default raft_thread_nice"
    );
}

#[test]
fn a_renamed_flag_is_caught() {
    // The check above must be able to fail: a flag the binary does not know is refused.
    let args: Vec<String> = ["serve", "--config", "c.json", "--node-id", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let argv = std::iter::once("raftlog".to_string()).chain(args);
    assert!(raftlog::cli::Cli::try_parse_from(argv).is_err());
}

/// Every document of the Kubernetes manifest, by `kind/name`.
fn kubernetes() -> BTreeMap<String, Value> {
    let text = read("deploy/kubernetes/raftlog.yaml");
    let mut docs = BTreeMap::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(document).expect("each manifest document is YAML");
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().expect("a kind").to_string();
        let name = value["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_string();
        docs.insert(format!("{kind}/{name}"), value);
    }
    docs
}

/// What `sh -c SCRIPT` runs in pod `hostname`: the script with its `exec raftlog` replaced by
/// a printer, so the shell expands the arguments exactly as the container's shell would.
fn container_args(script: &str, hostname: &str) -> Vec<String> {
    let printing = script.replacen("exec raftlog ", "printf '%s\\n' ", 1);
    assert_ne!(
        printing, script,
        "the container's script must `exec raftlog ...`: {script}"
    );
    let output = std::process::Command::new("sh")
        .args(["-c", &printing])
        .env("HOSTNAME", hostname)
        .output()
        .expect("sh runs");
    assert!(output.status.success(), "sh -c {printing}: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn kubernetes_statefulset_services_and_probes_match_the_binary_and_config() {
    let docs = kubernetes();
    let get = |key: &str| {
        docs.get(key).unwrap_or_else(|| {
            panic!(
                "deploy/kubernetes/raftlog.yaml has no {key}; it has {:?}",
                docs.keys()
            )
        })
    };
    let config_map = get("ConfigMap/raftlog-config");
    let config_text = config_map["data"]["config.json"]
        .as_str()
        .expect("config.json in the ConfigMap");
    let config = ClusterConfig::parse(
        config_text,
        std::path::Path::new("ConfigMap raftlog-config"),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let set = get("StatefulSet/raftlog");
    let spec = &set["spec"];
    assert_eq!(
        spec["podManagementPolicy"].as_str(),
        Some("Parallel"),
        "StatefulSet: podManagementPolicy"
    );
    let replicas = spec["replicas"].as_u64().expect("replicas");
    assert_eq!(
        replicas as usize,
        config.nodes().len(),
        "StatefulSet: one replica per configured node"
    );
    let headless = get(&format!(
        "Service/{}",
        spec["serviceName"].as_str().expect("serviceName")
    ));
    assert_eq!(
        headless["spec"]["clusterIP"].as_str(),
        Some("None"),
        "the StatefulSet's service is headless"
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true),
        "pods run as non-root"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        strings(&container["command"], "command"),
        ["sh", "-c"],
        "the container runs a shell script"
    );
    let script = container["args"][0].as_str().expect("the script");
    let port = |name: &str| {
        container["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("the container has no port named {name}"))
    };
    let mounts: BTreeMap<String, String> = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["mountPath"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for ordinal in 0..replicas {
        let pod_name = format!("raftlog-{ordinal}");
        let args = container_args(script, &pod_name);
        parse_command_line(&format!("StatefulSet raftlog, pod {pod_name}"), &args);
        let id: u64 = flag_value(&args, "--id")
            .and_then(|v| v.parse().ok())
            .expect("--id N");
        assert_eq!(id, ordinal + 1, "pod {pod_name} runs node {id}");
        assert!(
            args.iter().any(|a| a == "--bind-all"),
            "a Service IP cannot be bound: --bind-all"
        );
        let addrs = config
            .node(id)
            .unwrap_or_else(|| panic!("node {id} of pod {pod_name} is not in config.json"));
        assert_eq!(
            u64::from(addrs.raft_addr.port()),
            port("raft"),
            "containerPort raft vs nodes.\"{id}\".raft_addr"
        );
        assert_eq!(
            u64::from(addrs.api_addr.port()),
            port("api"),
            "containerPort api vs nodes.\"{id}\".api_addr"
        );
        // The node's configured IP is its own Service's fixed ClusterIP.
        let service = get(&format!("Service/{pod_name}"));
        assert_eq!(
            service["spec"]["clusterIP"].as_str(),
            Some(addrs.raft_addr.ip().to_string().as_str()),
            "Service {pod_name}: clusterIP vs nodes.\"{id}\" in config.json"
        );
        assert_eq!(
            addrs.raft_addr.ip(),
            addrs.api_addr.ip(),
            "node {id}: one Service serves both ports"
        );
        assert_eq!(
            service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"].as_str(),
            Some(pod_name.as_str()),
            "Service {pod_name} selects its pod"
        );
        let config_flag = flag_value(&args, "--config").expect("--config");
        assert_eq!(
            Some(config_flag.to_string()),
            mounts.get("config").map(|dir| format!("{dir}/config.json")),
            "--config is the mounted ConfigMap"
        );
    }
    assert_eq!(
        mounts.get("data").map(String::as_str),
        Some(config.data_dir().to_string_lossy().as_ref()),
        "the data volume is mounted at data_dir"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(
            container[probe]["httpGet"]["path"].as_str(),
            Some(path),
            "{probe}"
        );
        assert_eq!(
            container[probe]["httpGet"]["port"].as_str(),
            Some("api"),
            "{probe} port"
        );
    }
    let client = get("Service/raftlog");
    assert_eq!(client["spec"]["selector"]["app"].as_str(), Some("raftlog"));
    assert!(
        client["spec"]["publishNotReadyAddresses"].as_bool() != Some(true),
        "the client Service must route to ready pods only"
    );
    let budget = get("PodDisruptionBudget/raftlog");
    let tolerance = (config.nodes().len() as u64 - 1) / 2;
    assert!(
        budget["spec"]["maxUnavailable"]
            .as_u64()
            .is_some_and(|m| m >= 1 && m <= tolerance),
        "the PodDisruptionBudget must keep a quorum: maxUnavailable within 1..={tolerance}"
    );
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"]["app"].as_str(),
        Some("raftlog")
    );
}

/// The `kubernetes-validate` version whose bundled schemas the manifests are checked
/// against: it carries Kubernetes 1.25 to 1.37.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The oldest and the newest Kubernetes the manifests must be valid for: the oldest
/// release still common in managed clusters, and the newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// The directory holding the `kubernetes_validate` module, installed when missing.
fn kubernetes_validate() -> Result<PathBuf, String> {
    let cache = std::env::var_os("RAFTLOG_K8S_VALIDATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/k8s-validate-cache"));
    if cache.join("kubernetes_validate/__init__.py").exists() {
        return Ok(cache);
    }
    eprintln!(
        "deploy_files: installing {KUBERNETES_VALIDATE} into {}",
        cache.display()
    );
    let output = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&cache)
        .arg(KUBERNETES_VALIDATE)
        .output()
        .map_err(|e| format!("cannot run python3 -m pip: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`python3 -m pip install --target {} {KUBERNETES_VALIDATE}` failed: {}",
            cache.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(cache)
}

/// Runs the strict schema validation of `manifest` for one Kubernetes version.
fn validate_manifest(
    module_dir: &std::path::Path,
    manifest: &std::path::Path,
    version: &str,
) -> std::process::Output {
    std::process::Command::new("python3")
        .env("PYTHONPATH", module_dir)
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "--no-warn",
        ])
        .args(["--kubernetes-version", version])
        .arg(manifest)
        .output()
        .expect("run python3 -m kubernetes_validate")
}

#[test]
fn kubernetes_manifests_match_the_kubernetes_api_schemas() {
    let module_dir = match kubernetes_validate() {
        Ok(dir) => dir,
        // Like the browser test: skip, saying why, only when installing is impossible.
        Err(why) => {
            eprintln!("deploy_files: SKIPPED the Kubernetes schema check: {why}");
            return;
        }
    };
    let manifest = repo().join("deploy/kubernetes/raftlog.yaml");
    for version in KUBERNETES_VERSIONS {
        let run = validate_manifest(&module_dir, &manifest, version);
        assert!(
            run.status.success(),
            "deploy/kubernetes/raftlog.yaml is not valid for Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }

    // The validator itself must be able to fail: a misspelt field is refused.
    let text = read("deploy/kubernetes/raftlog.yaml");
    assert!(text.contains("podManagementPolicy:"));
    let broken = text.replace("podManagementPolicy:", "podManagmentPolicy:");
    let dir = tempfile::tempdir().expect("tempdir");
    let broken_path = dir.path().join("raftlog.yaml");
    std::fs::write(&broken_path, broken).expect("write the broken manifest");
    let run = validate_manifest(&module_dir, &broken_path, KUBERNETES_VERSIONS[1]);
    assert!(
        !run.status.success(),
        "a misspelt StatefulSet field passed validation: the schema check checks nothing"
    );
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("podManagmentPolicy"),
        "the validator's complaint should name the misspelt field: {}",
        String::from_utf8_lossy(&run.stdout)
    );
}
