//! The bench's report (text and JSON), its progress line, and CPU time from /proc.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::etcd::System;
use super::{Consistency, OpKind};

/// What a run measured.
pub struct Report {
    pub system: System,
    pub op: OpKind,
    pub consistency: Consistency,
    pub read_ratio: f64,
    pub endpoints: Vec<String>,
    pub leader: Option<String>,
    pub clients: usize,
    pub value_size: usize,
    pub key_space: u64,
    pub warmup_seconds: f64,
    /// Length of the measured interval.
    pub seconds: f64,
    pub writes: u64,
    pub reads: u64,
    /// Reads answered "no such key" (raftlog's 404), counted in `reads`.
    pub not_found: u64,
    pub errors: BTreeMap<String, u64>,
    /// Microseconds, successful requests only.
    pub latency: Histogram<u64>,
    pub cpu_pids: Vec<u32>,
    /// CPU seconds (user + system) the `cpu_pids` used in the measured interval.
    pub cpu_seconds: Option<f64>,
}

fn op_name(op: OpKind) -> &'static str {
    match op {
        OpKind::Put => "put",
        OpKind::Get => "get",
        OpKind::Mixed => "mixed",
    }
}

impl Report {
    /// Successful requests in the measured interval.
    pub fn ops(&self) -> u64 {
        self.writes + self.reads
    }

    /// The endpoints the clients used.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// `none`, or `3 timeout, 1 http 503 overloaded`.
    pub fn errors_summary(&self) -> String {
        if self.errors.is_empty() {
            return "no errors".into();
        }
        self.errors
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn per_second(&self, n: u64) -> f64 {
        if self.seconds > 0.0 {
            n as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Latency at `quantile` (0..=1) in milliseconds; 0 without samples.
    fn latency_ms(&self, quantile: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    /// Cluster CPU microseconds per successful request, and per write.
    fn cpu_micros_per(&self, n: u64) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (n > 0).then(|| cpu * 1e6 / n as f64)
    }

    /// The report as one JSON object. `writes`, `errors` (a count), `writes_per_second`,
    /// `seconds` and `latency_ms.{p50,p90,p99,p999,max}` are what earlier versions printed.
    pub fn to_json(&self) -> Value {
        json!({
            "target": self.system.name(),
            "op": op_name(self.op),
            "consistency": self.consistency.name(),
            "read_ratio": if self.op == OpKind::Mixed { json!(self.read_ratio) } else { Value::Null },
            "endpoints": self.endpoints,
            "leader": self.leader,
            "clients": self.clients,
            "value_size": self.value_size,
            "key_space": self.key_space,
            "warmup_seconds": self.warmup_seconds,
            "seconds": self.seconds,
            "ops": self.ops(),
            "writes": self.writes,
            "reads": self.reads,
            "not_found": self.not_found,
            "errors": self.error_count(),
            "errors_by_kind": self.errors,
            "ops_per_second": self.per_second(self.ops()),
            "writes_per_second": self.per_second(self.writes),
            "reads_per_second": self.per_second(self.reads),
            "latency_ms": {
                "p50": self.latency_ms(0.5),
                "p90": self.latency_ms(0.9),
                "p99": self.latency_ms(0.99),
                "p999": self.latency_ms(0.999),
                "max": self.max_ms(),
                "mean": self.latency.mean() / 1000.0,
            },
            "cpu_pids": self.cpu_pids,
            "cpu_seconds": self.cpu_seconds,
            "cpu_cores": self.cpu_seconds.map(|cpu| if self.seconds > 0.0 { cpu / self.seconds } else { 0.0 }),
            "cpu_us_per_op": self.cpu_micros_per(self.ops()),
            "cpu_us_per_write": self.cpu_micros_per(self.writes),
        })
    }

    /// The report for a person.
    pub fn to_text(&self) -> String {
        let what = match self.op {
            OpKind::Put => "put".to_string(),
            OpKind::Get => format!("{} get", self.consistency.name()),
            OpKind::Mixed => format!(
                "{:.0}/{:.0} {} get/put",
                self.read_ratio * 100.0,
                (1.0 - self.read_ratio) * 100.0,
                self.consistency.name()
            ),
        };
        let mut out = format!(
            "{} {what}: {} clients over {} endpoint(s), {} B values, {} keys, {:.1} s measured after {:.1} s warmup\n",
            self.system.name(),
            self.clients,
            self.endpoints.len(),
            self.value_size,
            self.key_space,
            self.seconds,
            self.warmup_seconds,
        );
        out += &format!(
            "{} ops ({} writes, {} reads{}): {:.0} ops/s; {}\n",
            self.ops(),
            self.writes,
            self.reads,
            if self.not_found > 0 {
                format!(", {} not found", self.not_found)
            } else {
                String::new()
            },
            self.per_second(self.ops()),
            self.errors_summary(),
        );
        out += &format!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.max_ms(),
        );
        if let Some(cpu) = self.cpu_seconds {
            out += &format!(
                "cpu: {cpu:.2} s in {} process(es) = {:.2} cores; {:.0} µs per op\n",
                self.cpu_pids.len(),
                if self.seconds > 0.0 {
                    cpu / self.seconds
                } else {
                    0.0
                },
                self.cpu_micros_per(self.ops()).unwrap_or(0.0),
            );
        }
        out
    }
}

/// CPU seconds (user + system) used so far by all of `pids`, from `/proc/PID/stat`; `None`
/// without pids or if one cannot be read (it exited).
pub fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    // SAFETY: sysconf reads a constant of the running system; no memory is passed.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_second <= 0 {
        return None;
    }
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ticks += stat_cpu_ticks(&stat)?;
    }
    Some(ticks as f64 / ticks_per_second as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after its closing one.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Reads the live counters.
pub struct Counters {
    pub answered: Box<dyn Fn() -> u64 + Send>,
    pub failed: Box<dyn Fn() -> u64 + Send>,
}

/// The live progress line (indicatif): phase, ops/s over the last half second, errors.
pub struct Progress {
    bar: indicatif::ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts drawing on stderr; `run_length` is warmup + duration (`None` with --requests).
    pub fn start(
        counters: Counters,
        warmup: Duration,
        requests: Option<u64>,
        run_length: Option<Duration>,
    ) -> Progress {
        let length = run_length.map_or(requests.unwrap_or(0), |d| d.as_millis() as u64);
        let bar = indicatif::ProgressBar::new(length);
        let style = indicatif::ProgressStyle::with_template("{bar:30} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut last = (started, (counters.answered)());
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let now = tokio::time::Instant::now();
                let answered = (counters.answered)();
                let rate = (answered - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                last = (now, answered);
                let phase = if now - started < warmup {
                    "warmup"
                } else {
                    "measuring"
                };
                shown.set_message(format!(
                    "{phase}: {rate:>8.0} ops/s, {} errors",
                    (counters.failed)()
                ));
                shown.set_position(match run_length {
                    Some(_) => (now - started).as_millis() as u64,
                    None => answered,
                });
            }
        });
        Progress { bar, task }
    }

    /// Removes the line.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces() {
        let stat = "4242 (raft log) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 9 0";
        assert_eq!(stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_cpu_time_is_readable() {
        let pid = std::process::id();
        let spent = cpu_seconds(&[pid]);
        assert!(spent.is_some_and(|s| s >= 0.0), "{spent:?}");
        assert_eq!(cpu_seconds(&[]), None);
    }

    #[test]
    fn report_keeps_the_old_json_fields_and_adds_percentiles_from_the_histogram() {
        let mut latency = crate::cli::bench::load::new_histogram();
        for micros in 1..=1000u64 {
            latency.record(micros * 10).unwrap_or(());
        }
        let report = Report {
            system: System::Raftlog,
            op: OpKind::Put,
            consistency: Consistency::Linearizable,
            read_ratio: 0.9,
            endpoints: vec!["127.0.0.1:1".into()],
            leader: None,
            clients: 4,
            value_size: 100,
            key_space: 10,
            warmup_seconds: 0.0,
            seconds: 2.0,
            writes: 1000,
            reads: 0,
            not_found: 0,
            errors: BTreeMap::from([("timeout".to_string(), 2)]),
            latency,
            cpu_pids: vec![1],
            cpu_seconds: Some(0.5),
        };
        let json = report.to_json();
        assert_eq!(json["writes"], 1000);
        assert_eq!(json["errors"], 2);
        assert_eq!(json["errors_by_kind"]["timeout"], 2);
        assert_eq!(json["writes_per_second"], 500.0);
        let p50 = json["latency_ms"]["p50"].as_f64().unwrap_or(0.0);
        assert!((4.99..=5.01).contains(&p50), "p50 {p50}");
        let max = json["latency_ms"]["max"].as_f64().unwrap_or(0.0);
        assert!((9.99..=10.01).contains(&max), "max {max}");
        assert_eq!(json["cpu_us_per_write"], 500.0);
        assert!(report.to_text().contains("1 timeout") || report.to_text().contains("2 timeout"));
    }
}
