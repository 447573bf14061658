//! The report: printed, and written to target/benchmarks.json and docs/benchmarks.md, each
//! section with the command that produced it. A run of some scenarios replaces their sections
//! and keeps the others.

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
    let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC");
    let written = format!(
        "Written by `{command}` (`cargo bench --bench capstan`) on {now}, a run of {:.1} min.",
        elapsed.as_secs_f64() / 60.0
    );
    let mut header = String::new();
    let _ = writeln!(
        header,
        "# Benchmarks\n\nEach section is written by the run it names; do not edit by hand.\n"
    );
    let _ = writeln!(header, "- Machine: {}", machine());
    let _ = writeln!(
        header,
        "- Control plane: kube-apiserver and etcd from `tests/env/tools` (k8s.io/kubernetes v1.37.2, etcd v3.7.0) on loopback; git over smart HTTP (lighttpd 1.4 + git http-backend) on loopback"
    );
    let _ = writeln!(
        header,
        "- Controller: `capstan controller` built in release mode, a separate process with its own ServiceAccount (cluster-admin), default flags (concurrency 4, apply concurrency 8, git concurrency 2); requests are counted from the API server's audit log by that identity, CPU and memory from /proc"
    );
    println!("\n{}\n{written}", header.trim_end());
    let mut sections = Vec::new();
    let mut json_out = serde_json::Map::new();
    for (key, title, f) in results {
        let mut md = String::new();
        let _ = writeln!(md, "## {title}\n\n{written}\n");
        if ["cold", "steady", "latency", "drift"].contains(key) {
            let _ = writeln!(
                md,
                "The first controller (scenarios 1-4) at the end of the run: RSS {rss:.1} MiB, peak {peak:.1} MiB.\n"
            );
        }
        let columns = f.columns.clone().unwrap_or_else(|| vec!["value"]);
        let _ = writeln!(
            md,
            "| figure | {} |\n|---|{}",
            columns.join(" | "),
            "---|".repeat(columns.len())
        );
        println!("\n{title}");
        if f.columns.is_some() {
            println!("  {:<32} {}", "", columns.join(" · "));
        }
        for (name, cells) in &f.rows {
            let escaped: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(md, "| {name} | {} |", escaped.join(" | "));
            println!("  {name:<32} {}", cells.join(" · "));
        }
        sections.push(((*title).to_string(), md));
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
    let docs = root.join("docs/benchmarks.md");
    // Kept: the sections of scenarios this run left out (those run only by name, too).
    let kept = std::fs::read_to_string(&docs).unwrap_or_default();
    std::fs::write(&docs, merge(&header, &kept, sections)).unwrap();
    println!("\nwrote docs/benchmarks.md and target/benchmarks.json");
}

/// The document: `header`, then the sections of `kept` (an earlier document) that `sections`
/// do not replace, and `sections`, in the order of their numbers.
fn merge(header: &str, kept: &str, sections: Vec<(String, String)>) -> String {
    // A document from before sections named their runs names it in its header.
    let old_run = kept
        .split("\n## ")
        .next()
        .and_then(|h| h.lines().find(|l| l.starts_with("Written by ")))
        .map(str::to_string);
    let mut all: Vec<(String, String)> = kept
        .split("\n## ")
        .skip(1)
        .filter_map(|part| {
            let (title, body) = part.split_once('\n')?;
            let body = body.trim();
            let body = match &old_run {
                Some(run) if !body.starts_with("Written by ") => format!("{run}\n\n{body}"),
                _ => body.to_string(),
            };
            Some((title.to_string(), format!("## {title}\n\n{body}\n")))
        })
        .filter(|(title, _)| sections.iter().all(|(t, _)| t != title))
        .collect();
    all.extend(sections);
    let number = |title: &str| -> u32 {
        let digits: String = title.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap_or(u32::MAX)
    };
    all.sort_by_key(|(title, _)| number(title));
    let mut out = header.to_string();
    for (_, section) in all {
        out.push('\n');
        out.push_str(&section);
    }
    out
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
