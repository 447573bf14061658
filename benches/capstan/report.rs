//! The report: printed, and written to target/benchmarks.json and (after a full run)
//! docs/benchmarks.md, with the command that produced it.

use super::*;

/// Prints the figures and writes them; `wanted` are the scenarios asked for (all when empty),
/// `rss` the first controller's memory at the end of scenarios 1-4 (now, peak; MiB).
pub(crate) fn write(
    wanted: &[String],
    results: &[(&str, &str, Figures)],
    (rss, peak): (f64, f64),
    elapsed: Duration,
) {
    let command = if wanted.is_empty() {
        "make bench".to_string()
    } else {
        format!("make bench SCENARIOS=\"{}\"", wanted.join(" "))
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `{command}` (`cargo bench --bench capstan`) on {}; do not edit by hand.\n",
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(md, "- Machine: {}", machine());
    let _ = writeln!(
        md,
        "- Control plane: kube-apiserver and etcd from `tests/env/tools` (k8s.io/kubernetes v1.37.2, etcd v3.7.0) on loopback; git over smart HTTP (lighttpd 1.4 + git http-backend) on loopback"
    );
    let _ = writeln!(
        md,
        "- Controller: `capstan controller` built in release mode, a separate process with its own ServiceAccount (cluster-admin), default flags (concurrency 4, apply concurrency 8, git concurrency 2); requests are counted from the API server's audit log by that identity, CPU and memory from /proc"
    );
    let _ = writeln!(
        md,
        "- First controller (scenarios 1-4) at the end: RSS {rss:.1} MiB, peak {peak:.1} MiB"
    );
    let _ = writeln!(md, "- Whole run: {:.1} min\n", elapsed.as_secs_f64() / 60.0);
    println!("\n{}", md.trim_end());
    let mut json_out = serde_json::Map::new();
    for (key, title, f) in results {
        let _ = writeln!(md, "## {title}\n\n| figure | value |\n|---|---|");
        println!("\n{title}");
        for (name, shown) in &f.rows {
            let _ = writeln!(md, "| {name} | {} |", shown.replace('|', "\\|"));
            println!("  {name:<32} {shown}");
        }
        let _ = writeln!(md);
        json_out.insert(key.to_string(), Value::Object(f.json.clone()));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(
        root.join("target/benchmarks.json"),
        serde_json::to_string_pretty(
            &json!({"command": command, "machine": machine(), "results": json_out}),
        )
        .unwrap(),
    )
    .unwrap();
    if wanted.is_empty() {
        std::fs::write(root.join("docs/benchmarks.md"), md).unwrap();
        println!("\nwrote docs/benchmarks.md and target/benchmarks.json");
    } else {
        println!("\nwrote target/benchmarks.json (docs/benchmarks.md is written by a full run)");
    }
}

pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem:.0} GiB memory")
}
