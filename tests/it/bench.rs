//! `ledgerline bench --quick` as a smoke test: it runs to the end against
//! real nats-servers and receivers, and its report has every figure the
//! issue asks for, ending with the ratio line. No thresholds: timings on a
//! shared machine prove nothing.

use std::process::Command;

/// `ledgerline bench <args>`: its report, once it has exited 0.
fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ledgerline"))
        .arg("bench")
        .args(args)
        .output()
        .expect("ledgerline runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// The figures of a report line's value: `a · b · c (a remark)` → a, b, c.
fn figures(value: &str) -> Vec<&str> {
    value
        .split(" (")
        .next()
        .unwrap_or_default()
        .split(" · ")
        .map(str::trim)
        .collect()
}

#[test]
fn bench_quick_reports_every_figure_and_ends_with_the_ratio() {
    let stdout = bench(&["--quick", "--paced-seconds", "0.5", "--rounds", "2"]);
    for part in [
        "(a) JetStream raw",
        "async publish",
        "pull consume + ack",
        "guarded async publish ",
        "with the guarded publish rate for the 3 writes it would be ",
        "(b) HTTP raw",
        "(c) pipeline end to end",
        "postings delivered with registry_data stored",
        "postings/s",
        "p50 ",
        "p99 ",
        "p99.9 ",
        "paced at half the median burst rate",
        "2 rounds of (c), (a) and (b); shown: round ",
        "rounds, in the order run:",
        "CPU per 1,000 postings",
        "nats-server messages ",
        " out per posting (",
        "peak RSS",
        "limit = 1 / (3/publish + 2/consume + 1/POST)",
        "(d) scale: 300 distinct orders",
        "→ 300 postings delivered to 1 registry",
        "RSS of this process",
        "caches at the end",
        "(e) export of the 300 postings",
        "csv ",
        "beancount ",
        "rows/s",
    ] {
        assert!(stdout.contains(part), "{part:?} missing from:\n{stdout}");
    }
    // Each export line ends with its CPU and nats-server's, per 1,000
    // postings (both readable on Linux).
    for format in ["csv", "beancount"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{format} ")))
            .unwrap_or_else(|| panic!("no {format} line in:\n{stdout}"));
        let (_, cpu) = line.split_once(", CPU ").expect(line);
        let (export, nats) = cpu.split_once(" + ").expect(line);
        for figure in [export, nats] {
            let ms = figure.strip_suffix(" ms").expect(line);
            assert!(ms.parse::<f64>().is_ok_and(|v| v >= 0.0), "{line}");
        }
    }
    let last = stdout.lines().last().unwrap_or_default();
    let ratio = last
        .strip_prefix("end-to-end/limit ratio: ")
        .unwrap_or_else(|| panic!("last line {last:?}"));
    let (int, frac) = ratio.split_once('.').expect("a decimal ratio");
    assert!(
        int.chars().all(|c| c.is_ascii_digit()) && frac.len() == 2,
        "{last:?}"
    );
    let value: f64 = ratio.parse().expect("a number");
    assert!(value > 0.0, "nothing was delivered: {stdout}");
    // The last line is the median of the rounds' ratios (two rounds: their
    // mean), each printed to two places.
    let rounds_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("end-to-end/limit ratio    "))
        .unwrap_or_else(|| panic!("no rounds' ratio line in:\n{stdout}"));
    let each: Vec<f64> = figures(
        rounds_line
            .trim_start()
            .trim_start_matches("end-to-end/limit ratio"),
    )
    .iter()
    .map(|r| r.parse().expect(rounds_line))
    .collect();
    assert_eq!(each.len(), 2, "{rounds_line}");
    let mean = (each[0] + each[1]) / 2.0;
    assert!((mean - value).abs() <= 0.011, "{rounds_line} vs {last}");
    // Every posting was delivered: `N orders → E events → P postings`.
    let postings: u64 = stdout
        .split(" postings delivered")
        .next()
        .and_then(|s| s.rsplit("→ ").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(postings > 0, "{stdout}");
}

/// `--instances 1,2`: each count runs to the end on a 3-node cluster with
/// every posting delivered (the stage fails otherwise: a chain break, or
/// postings left undelivered), and the report has a line per count.
#[test]
fn bench_instances_runs_each_count_on_a_cluster() {
    let stdout = bench(&["--instances", "1,2", "--orders", "30"]);
    assert!(
        stdout.contains("(g) instances sharing the work (order_partitions = 6, share_registries): a 3-node cluster"),
        "{stdout}"
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("instance(s): "))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, n) in lines.iter().zip(["1", "2"]) {
        assert!(
            line.trim_start().starts_with(&format!("{n} instance(s): ")),
            "{line}"
        );
        let postings: u64 = line
            .split("instance(s): ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("postings in {line:?}"));
        assert!(postings > 30, "{line}");
        assert!(line.contains("postings/s"), "{line}");
    }
}

/// `--long-orders 1500`: the same 500 orders, 3 events each, round robin;
/// every event posts once and every posting is delivered, and the report
/// has a rate and the CPU per 1,000 postings for each fifth, and the
/// aggregator's cache holding all 500 orders.
#[test]
fn bench_long_orders_delivers_every_event_and_reports_each_fifth() {
    let stdout = bench(&["--long-orders", "1500"]);
    let head = stdout
        .lines()
        .find(|l| l.starts_with("(h) long-lived orders: 500 orders, 1500 events"))
        .unwrap_or_else(|| panic!("no (h) line in:\n{stdout}"));
    assert!(
        head.contains("→ 1500 postings delivered to 1 registry"),
        "{head}"
    );
    let fifths = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("postings/s, each fifth"))
        .unwrap_or_else(|| panic!("no fifths in:\n{stdout}"));
    let rates: Vec<f64> = figures(fifths)
        .iter()
        .map(|r| r.parse().expect(fifths))
        .collect();
    assert_eq!(rates.len(), 5, "{fifths}");
    assert!(rates.iter().all(|r| *r > 0.0), "{fifths}");
    assert!(stdout.contains("last fifth / second fifth "), "{stdout}");
    // CPU per 1,000 postings in each fifth: this process's + nats-server's.
    let cpu = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("CPU s per 1,000 postings"))
        .unwrap_or_else(|| panic!("no CPU line in:\n{stdout}"));
    let pairs = figures(cpu);
    assert_eq!(pairs.len(), 5, "{cpu}");
    for pair in pairs {
        let (own, nats) = pair.split_once(" + ").expect(cpu);
        assert!(own.parse::<f64>().is_ok_and(|v| v > 0.0), "{cpu}");
        assert!(nats.parse::<f64>().is_ok_and(|v| v >= 0.0), "{cpu}");
    }
    assert!(stdout.contains(" · nats-server peak "), "{stdout}");
    // Every book stays cached (500 is under the bound); the dispatcher's
    // states are kept as each order's last worker ends, just after its
    // last ack, so that count is not asserted exactly.
    assert!(
        stdout.contains("aggregator order books 500 (bound 10000)")
            && stdout.contains("dispatcher caught-up orders ")
            && stdout.contains(" (bound 4096)"),
        "{stdout}"
    );
    // Restarted, each order gets one more event and its book is rebuilt.
    let restart = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("after a restart"))
        .unwrap_or_else(|| panic!("no restart line in:\n{stdout}"));
    assert!(
        restart.contains(
            "500 orders' next event (each order's book rebuilt: 3 events, a snapshot every 64) delivered in "
        ),
        "{restart}"
    );
    // Each order's book rebuilt once, none from a snapshot (3 < 64 events).
    assert!(
        restart.ends_with("books rebuilt 500, 0 of them from a snapshot"),
        "{restart}"
    );
}
