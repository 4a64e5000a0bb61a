//! `spot_pipeline --metrics-addr`: a run's Prometheus endpoint, scraped over
//! HTTP after the run, agrees with the run's own `--json` report.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Parses the Prometheus text format: `name{labels} value` → value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain"), "{head}");
    body.to_owned()
}

#[test]
fn scraped_counters_equal_the_runs_report() {
    let mut child = Command::new(common::example_binary())
        .args([
            "--jobs",
            "16",
            "--side",
            "64",
            "--bad-inputs",
            "2",
            "--json",
        ])
        .args(["--timeout", "120", "--metrics-addr", "127.0.0.1:0"])
        .args(["--metrics-linger-secs", "60"])
        // Long enough (16 × 100 ms of stage-1 work) to be scraped mid-run.
        .args(["--process-delay-ms", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The endpoint's address (port 0: the example prints the one it bound).
    let (addr_tx, addr_rx) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let err_log = std::thread::spawn(move || {
        let mut log = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("metrics on http://") {
                let _ = addr_tx.send(rest.trim_end_matches("/metrics").to_owned());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let (report_tx, report_rx) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.starts_with('{') {
                let _ = report_tx.send(line);
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the example never said where it serves metrics");
    // While the run goes on the endpoint already answers, with both
    // stages' series once their pipelines have started (scraped until then,
    // at most until the report: a scrape after the report ends the linger).
    let wanted: Vec<String> = ["stage1", "stage2"]
        .iter()
        .flat_map(|stage| {
            [
                "ferry_received_total",
                "ferry_acked_total",
                "ferry_in_flight",
            ]
            .map(|name| format!("{name}{{pipeline=\"{stage}\"}}"))
        })
        .collect();
    let started = std::time::Instant::now();
    let during = loop {
        let scraped = parse(&scrape(&addr));
        if wanted.iter().all(|k| scraped.contains_key(k)) {
            break scraped;
        }
        if report_rx.try_recv().is_ok() {
            panic!("the run ended before its series were scraped: {scraped:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no pipeline series within 60 s: {scraped:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        during.keys().all(|k| k.starts_with("ferry_")),
        "a metric not named ferry_*: {during:?}"
    );
    let line = report_rx
        .recv_timeout(Duration::from_secs(150))
        .expect("no JSON report");
    let report: serde_json::Value = serde_json::from_str(&line).unwrap();
    // The run is over: this scrape sees the final figures, and ends the linger.
    let after = parse(&scrape(&addr));
    let scraped_at = std::time::Instant::now();
    let status = child.wait().unwrap();
    // That scrape ended the linger (60 s otherwise).
    assert!(
        scraped_at.elapsed() < Duration::from_secs(20),
        "the example kept serving after the final scrape"
    );
    let log = err_log.join().unwrap();
    assert!(status.success(), "exit {status:?}; stderr:\n{log}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["dead_lettered"], 2, "{report}");

    // Every counter the report has is scraped (a missing one fails here,
    // not as a zero).
    let counter = |name: &str, stage: &str| {
        let key = format!("ferry_{name}_total{{pipeline=\"{stage}\"}}");
        after
            .get(&key)
            .copied()
            .unwrap_or_else(|| panic!("{key} not in the final scrape")) as u64
    };
    let stages = report["stages"].as_object().unwrap();
    assert_eq!(
        stages.keys().map(String::as_str).collect::<Vec<_>>(),
        ["stage1", "stage2"]
    );
    let mut checked = 0;
    for (stage, figures) in stages {
        let figures_map = figures.as_object().unwrap();
        for name in [
            "received",
            "processed",
            "failed",
            "acked",
            "dead_lettered",
            "uploaded",
        ] {
            assert!(
                figures_map.contains_key(name),
                "{stage}: the report has no {name}: {figures}"
            );
        }
        for (name, value) in figures_map {
            let want = value.as_u64().unwrap();
            assert_eq!(
                counter(name, stage),
                want,
                "ferry_{name}_total for {stage}: scraped vs report"
            );
            checked += 1;
        }
        let fig = |k: &str| figures[k].as_u64().unwrap();
        let series = |name: &str| {
            let key = format!("{name}{{pipeline=\"{stage}\"}}");
            after
                .get(&key)
                .copied()
                .unwrap_or_else(|| panic!("{key} not in the final scrape"))
        };
        // Every processor run is timed; every acked job's life too.
        assert_eq!(
            series("ferry_processing_seconds_count") as u64,
            fig("processed") + fig("failed") + fig("panics"),
            "{stage}"
        );
        assert_eq!(
            series("ferry_end_to_end_seconds_count") as u64,
            fig("acked"),
            "{stage}"
        );
        assert_eq!(series("ferry_in_flight"), 0.0, "{stage}: leases at exit");
    }
    // The figures the issue names, for the record.
    let s1 = &stages["stage1"];
    eprintln!(
        "stage1 report: received {} processed {} failed {} acked {} dead_lettered {}; scraped: {} {} {} {} {}; {checked} counters compared",
        s1["received"], s1["processed"], s1["failed"], s1["acked"], s1["dead_lettered"],
        counter("received", "stage1"), counter("processed", "stage1"), counter("failed", "stage1"),
        counter("acked", "stage1"), counter("dead_lettered", "stage1"),
    );
    assert!(checked >= 2 * 20, "only {checked} counters compared");
    assert_eq!(counter("acked", "stage1"), 16);
    assert_eq!(counter("acked", "stage2"), 16);
    assert_eq!(counter("dead_lettered", "stage1"), 2);
}
