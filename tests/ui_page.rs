//! The live page (`GET /ui`) in a real browser: Debian's chromium, headless, driven by
//! Playwright (`tests/ui/ui_page.cjs`) against three real nodes. The page served by a
//! follower shows three nodes and one leader; a write moves every node's commit index;
//! an InstallSnapshot the leader reports in progress shows as "installing snapshot NN%";
//! after a SIGKILL of the leader it shows the leader down and a new leader within 2 s;
//! a node cut off from its peers says so. On a cluster with `auth.users`
//! (`tests/ui/ui_auth.cjs`): without credentials `/ui` answers 401 with the Basic challenge
//! and the browser shows what is needed, and a page whose polls are refused says it is not
//! authorised and what to do; a read user sees the cluster and no leadership or membership
//! button; an admin user's transfer button, confirmed, moves leadership.
//!
//! What is missing is installed: chromium with apt-get, playwright-core with npm into
//! `RAFTLOG_UI_CACHE` (default `target/ui-test-cache`). The test skips, saying why, only
//! when that is impossible (no node/npm, no apt-get, no registry). `RAFTLOG_UI_SCREENSHOT`
//! (default `target/ui-page.png`) is where the screenshot of the healthy cluster goes;
//! `RAFTLOG_UI_SCREENSHOT=docs/ui.png` refreshes the README's.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use support::{passwd, runtime, Cluster, ClusterSpec};

const CHROMIUM: &str = "/usr/bin/chromium";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_install(package: &str) -> Result<(), String> {
    eprintln!("ui_page: installing {package} with apt-get");
    let quiet = |args: &[&str]| {
        succeeds(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if quiet(&["install", "-y", "--no-install-recommends", package])
        || (quiet(&["update"]) && quiet(&["install", "-y", "--no-install-recommends", package]))
    {
        Ok(())
    } else {
        Err(format!(
            "`apt-get install -y {package}` failed (not root, or no package mirror)"
        ))
    }
}

/// The browser, installed when missing.
fn chromium() -> Result<PathBuf, String> {
    if !Path::new(CHROMIUM).exists() {
        apt_install("chromium")?;
    }
    if Path::new(CHROMIUM).exists() {
        Ok(PathBuf::from(CHROMIUM))
    } else {
        Err(format!(
            "{CHROMIUM} is still missing after installing chromium"
        ))
    }
}

/// The playwright-core module directory, installed into the cache when missing.
fn playwright_core() -> Result<PathBuf, String> {
    let has = |program: &str| succeeds(Command::new(program).arg("--version"));
    if !has("node") || !has("npm") {
        apt_install("nodejs")?;
        apt_install("npm")?;
    }
    let cache = std::env::var_os("RAFTLOG_UI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/ui-test-cache"));
    let module = cache.join("node_modules/playwright-core");
    if !module.join("package.json").exists() {
        std::fs::create_dir_all(&cache)
            .map_err(|e| format!("cannot create the npm cache {}: {e}", cache.display()))?;
        eprintln!(
            "ui_page: installing playwright-core into {}",
            cache.display()
        );
        let installed = succeeds(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&cache)
                .arg("playwright-core@1"),
        );
        if !installed {
            return Err(format!(
                "`npm install --prefix {} playwright-core@1` failed (no npm registry?)",
                cache.display()
            ));
        }
    }
    Ok(module)
}

/// The browser tests run one at a time: two clusters and two browsers at once on a small
/// CI machine would blur the failover timing the first one measures.
static ONE_BROWSER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The browser and playwright-core, or why the test cannot have them.
fn tools() -> Result<(PathBuf, PathBuf), String> {
    let chromium = chromium()?;
    Ok((chromium, playwright_core()?))
}

/// The browser to themselves (one browser test at a time) and its tools; `None`, saying
/// why the test is skipped, when the tools cannot be installed.
fn browser() -> Option<(std::sync::MutexGuard<'static, ()>, (PathBuf, PathBuf))> {
    let one = ONE_BROWSER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match tools() {
        Ok(found) => Some((one, found)),
        Err(why) => {
            eprintln!("ui_page: SKIPPED, cannot install the browser test's tools: {why}");
            None
        }
    }
}

/// Runs `tests/ui/<script>` against `cluster` (started, with a leader) with `env`, and
/// checks it reports every check passed.
fn browse(script: &str, cluster: &Cluster, tools: &(PathBuf, PathBuf), env: &[(&str, String)]) {
    let (chromium, playwright) = tools;
    let nodes: Vec<_> = cluster
        .nodes
        .keys()
        .map(|&id| {
            json!({"id": id, "api": cluster.api(id), "pid": cluster.pid(id).expect("the node runs")})
        })
        .collect();
    let output = Command::new("node")
        .arg(repo().join("tests/ui").join(script))
        .env("RAFTLOG_UI_NODES", Value::Array(nodes).to_string())
        .env("PLAYWRIGHT_CORE", playwright)
        .env("CHROMIUM", chromium)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test {script} failed ({}):\n{stdout}\n{stderr}\nnode logs:\n{}",
        output.status,
        cluster.logs_tail()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn live_page_shows_leader_failover_and_index_moves_in_a_real_browser() {
    let Some((_one, tools)) = browser() else {
        return;
    };
    let rt = runtime();
    let cluster = Cluster::start(ClusterSpec::default());
    rt.block_on(cluster.wait_for_leader(Duration::from_secs(10)));
    let screenshot = std::env::var_os("RAFTLOG_UI_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/ui-page.png"));
    browse(
        "ui_page.cjs",
        &cluster,
        &tools,
        &[(
            "RAFTLOG_UI_SCREENSHOT",
            screenshot.to_string_lossy().into_owned(),
        )],
    );
}

#[test]
fn live_page_shows_buttons_to_admin_only_and_refuses_anonymous_viewers_in_a_real_browser() {
    let Some((_one, tools)) = browser() else {
        return;
    };
    let rt = runtime();
    let cluster = Cluster::start_with_config(
        ClusterSpec::default(),
        json!({"auth": {"users": {
            "viewer": {"password_hash": passwd("viewer-pw"), "role": "read"},
            "operator": {"password_hash": passwd("operator-pw"), "role": "admin"},
        }}}),
    );
    rt.block_on(cluster.wait_for_leader(Duration::from_secs(10)));
    let users = json!({
        "read": {"username": "viewer", "password": "viewer-pw"},
        "admin": {"username": "operator", "password": "operator-pw"},
    });
    browse(
        "ui_auth.cjs",
        &cluster,
        &tools,
        &[("RAFTLOG_UI_USERS", users.to_string())],
    );
}
