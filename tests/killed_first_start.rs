//! A node killed while it creates its storage for the first time starts again: nothing was
//! acknowledged yet, so nothing may stand in the way of a restart. The full run of
//! 2026-12-07 found one that did not: a SIGKILL between sled writing `conf` and creating
//! `db` left a stable store the node refused as damaged ("`db` is missing but conf
//! remain(s)"), and the operator had to clear the directory by hand. That window is
//! microseconds wide; storage/src/stable.rs checks it exactly, this test kills at many
//! points of a first start and checks every one comes back.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{runtime, Cluster, ClusterSpec};

/// Where in a first start a kill lands.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// This long after the process was started.
    After(Duration),
    /// As soon as this path (relative to the node's data directory) exists.
    Appears(&'static str),
}

fn wait_for_path(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() && Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

#[test]
fn a_node_killed_during_its_first_start_starts_again() {
    let mut points: Vec<KillPoint> = (0..=20)
        .step_by(2)
        .map(|ms| KillPoint::After(Duration::from_millis(ms)))
        .collect();
    points.extend(
        ["stable", "stable/blobs", "stable/conf", "stable/db", "wal"]
            .into_iter()
            .map(KillPoint::Appears),
    );
    runtime().block_on(async {
        for point in points {
            let cluster = Cluster::configure(ClusterSpec {
                nodes: 1,
                ..ClusterSpec::default()
            });
            let data = cluster.data_dir(1);
            cluster.spawn(1);
            match point {
                KillPoint::After(delay) => std::thread::sleep(delay),
                KillPoint::Appears(relative) => {
                    wait_for_path(&data.join(relative), Duration::from_secs(5))
                }
            }
            cluster.kill(1);

            cluster.spawn(1);
            let started = Instant::now();
            let mut written = Err((0, String::new()));
            while started.elapsed() < Duration::from_secs(20) {
                if cluster.wait_exit(1, Duration::ZERO).is_some() {
                    break;
                }
                written = cluster.put(1, "k", "v").await;
                if written.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                written.is_ok(),
                "killed at {point:?} of its first start, the node did not take a write within \
                 20 s of its restart (last answer {written:?})\n{}",
                cluster.logs_tail()
            );
        }
    });
}
