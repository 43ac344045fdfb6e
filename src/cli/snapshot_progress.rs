//! `raftlog snapshot` at a terminal: a progress bar while the node writes the snapshot
//! (issue 17). `POST /v1/snapshot` answers only once the snapshot is durable, which for a
//! state of gigabytes takes seconds; meanwhile the node's `/metrics` counts the snapshot
//! bytes as they are written, and the previous snapshot's size is the estimate of the
//! total (a state grows slowly between two snapshots).

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

/// How often the bar asks the node for its counters.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A poll unanswered this long is skipped: the bar must never delay the answer.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

const BYTES_WRITTEN: &str = "raftlog_snapshot_bytes_written_total";
const LAST_SNAPSHOT_BYTES: &str = "raftlog_snapshot_last_bytes";

/// The snapshot counters in a Prometheus exposition: (bytes written so far in total, size
/// of the last snapshot taken). `None` when either is missing.
fn snapshot_counters(exposition: &str) -> Option<(u64, u64)> {
    let value = |name: &str| {
        exposition.lines().find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse::<f64>().ok())?
        })
    };
    Some((
        value(BYTES_WRITTEN)? as u64,
        value(LAST_SNAPSHOT_BYTES)? as u64,
    ))
}

async fn poll(client: &reqwest::Client, addr: &str) -> Option<(u64, u64)> {
    let scheme = super::identity::scheme();
    let response = client
        .get(format!("{scheme}://{addr}/metrics"))
        .timeout(POLL_TIMEOUT)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    snapshot_counters(&response.text().await.ok()?)
}

/// Awaits `sent` (the `POST /v1/snapshot` to `addr`), drawing on stderr how many bytes the
/// node has written meanwhile. Without a terminal, or when `/metrics` does not answer, it
/// only awaits.
pub async fn while_writing(
    client: &reqwest::Client,
    addr: &str,
    sent: impl Future<Output = reqwest::Result<reqwest::Response>>,
) -> reqwest::Result<reqwest::Response> {
    if !std::io::stderr().is_terminal() {
        return sent.await;
    }
    tokio::pin!(sent);
    let before = tokio::select! {
        response = &mut sent => return response,
        counters = poll(client, addr) => counters,
    };
    let Some((written_before, estimate)) = before else {
        return sent.await;
    };
    let bar = if estimate > 0 {
        let bar = indicatif::ProgressBar::new(estimate);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "writing snapshot {bar:30} {bytes} of ~{total_bytes} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        // The first snapshot: no size to compare with.
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} writing snapshot {bytes} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    };
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    loop {
        tokio::select! {
            response = &mut sent => {
                bar.finish_and_clear();
                return response;
            }
            _ = ticks.tick() => {
                if let Some((written, _)) = poll(client, addr).await {
                    let done = written.saturating_sub(written_before);
                    // The estimate is the last snapshot's size: the state may have grown.
                    if bar.length().is_some_and(|total| done > total) {
                        bar.set_length(done);
                    }
                    bar.set_position(done);
                }
                bar.tick();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_are_read_from_the_exposition_and_missing_ones_give_none() {
        let exposition = "# HELP raftlog_snapshot_bytes_written_total Snapshot bytes\n\
                          # TYPE raftlog_snapshot_bytes_written_total counter\n\
                          raftlog_snapshot_bytes_written_total 1048576\n\
                          raftlog_snapshot_bytes_written_total_extra 7\n\
                          raftlog_snapshot_last_bytes 524288\n";
        assert_eq!(snapshot_counters(exposition), Some((1_048_576, 524_288)));
        assert_eq!(
            snapshot_counters("raftlog_snapshot_last_bytes 5\n"),
            None,
            "without the bytes written there is no progress to show"
        );
        assert_eq!(snapshot_counters(""), None);
    }
}
