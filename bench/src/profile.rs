//! `--profile`: where tern spends its time under load. With `perf`, a sampled call-graph
//! profile folded into stacks and drawn as a flame graph (SVG, written here: no external
//! tools); always, the CPU split over tern's threads from /proc/PID/task/*/stat.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::server;

/// CPU ticks of each thread of `pid`, by thread ID: (name, ticks).
pub fn thread_ticks(pid: u32) -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(t) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| server::parse_stat_ticks(&s))
        {
            out.insert(tid, t);
        }
    }
    out
}

/// The CPU used by each thread name between two samples, as a share of the machine,
/// largest first.
pub fn thread_split(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    secs: f64,
) -> Vec<(String, f64)> {
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for (tid, (name, ticks)) in after {
        let prev = before.get(tid).map_or(0, |(_, t)| *t);
        *by_name.entry(name.clone()).or_default() += ticks.saturating_sub(prev);
    }
    let machine = secs.max(1e-3) * server::cores() as f64 * server::clock_ticks();
    let mut v: Vec<(String, f64)> = by_name
        .into_iter()
        .map(|(n, t)| (n, t as f64 / machine))
        .filter(|(_, s)| *s > 0.0)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// A running `perf record` of a process.
pub struct PerfRecording {
    child: Child,
}

/// Whether `perf` is installed.
pub fn perf_available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl PerfRecording {
    /// Starts sampling `pid` at 99 Hz with DWARF call graphs (release Rust has no frame
    /// pointers) into `out` for `secs` seconds.
    pub fn start(pid: u32, out: &Path, secs: u64) -> Result<Self> {
        let child = Command::new("perf")
            .args(["record", "-F", "99", "--call-graph", "dwarf,8192", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(out)
            .args(["--", "sleep"])
            .arg(secs.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn perf record")?;
        Ok(Self { child })
    }

    /// Waits for the recording to end.
    pub fn finish(self) -> Result<()> {
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "perf record: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// `perf script` of `data`, folded into "thread;frame;…;leaf count" lines.
pub fn fold_perf(data: &Path) -> Result<BTreeMap<String, u64>> {
    // DWARF unwinding in `perf script` can take minutes on a big binary: bound it.
    let out = Command::new("timeout")
        .args(["300", "perf", "script", "-F", "comm,ip,sym", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("run perf script")?;
    if !out.status.success() {
        bail!("perf script: {}", out.status);
    }
    Ok(fold(&String::from_utf8_lossy(&out.stdout)))
}

/// Folds `perf script` text: each sample is a header line (the thread name first) and one
/// frame per line, leaf first; samples are separated by blank lines.
pub fn fold(script: &str) -> BTreeMap<String, u64> {
    let mut folded = BTreeMap::new();
    let mut comm: Option<String> = None;
    let mut frames: Vec<String> = Vec::new();
    let mut flush = |comm: &mut Option<String>, frames: &mut Vec<String>| {
        if let Some(c) = comm.take() {
            let mut stack = vec![c];
            stack.extend(frames.drain(..).rev());
            *folded.entry(stack.join(";")).or_insert(0) += 1;
        }
        frames.clear();
    };
    for line in script.lines() {
        if line.trim().is_empty() {
            flush(&mut comm, &mut frames);
        } else if !line.starts_with(char::is_whitespace) {
            flush(&mut comm, &mut frames);
            comm = Some(line.split_whitespace().next().unwrap_or("?").to_owned());
        } else {
            // "  ffffffff81000000 symbol+0x12 (dso)" or, with -F ip,sym, "  addr symbol".
            let mut parts = line.split_whitespace();
            let _addr = parts.next();
            let sym: Vec<&str> = parts.take_while(|p| !p.starts_with('(')).collect();
            let sym = sym.join(" ");
            let sym = match sym.rsplit_once("+0x") {
                Some((s, _)) => s.to_owned(),
                None => sym,
            };
            // Semicolons separate frames in folded stacks.
            frames.push(if sym.is_empty() {
                "[unknown]".to_owned()
            } else {
                sym.replace(';', ":")
            });
        }
    }
    flush(&mut comm, &mut frames);
    folded
}

#[derive(Default)]
struct Node {
    total: u64,
    children: BTreeMap<String, Node>,
}

/// Draws folded stacks as a flame graph (root at the bottom; hover for names and counts).
pub fn flame_svg(folded: &BTreeMap<String, u64>, title: &str) -> String {
    let mut root = Node::default();
    let mut depth_max = 0;
    for (stack, count) in folded {
        root.total += count;
        let mut node = &mut root;
        let frames: Vec<&str> = stack.split(';').collect();
        depth_max = depth_max.max(frames.len());
        for f in frames {
            node = node.children.entry(f.to_owned()).or_default();
            node.total += count;
        }
    }
    const W: f64 = 1200.0;
    const ROW: f64 = 16.0;
    let h = (depth_max as f64 + 3.0) * ROW + 20.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(svg, r##"<rect width="{W}" height="{h}" fill="#f8f8f8"/>"##);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="16" font-size="13">{} ({} samples)</text>"#,
        escape(title),
        root.total
    );
    fn draw(svg: &mut String, name: &str, node: &Node, x: f64, depth: usize, scale: f64, h: f64) {
        let w = node.total as f64 * scale;
        if w < 0.5 {
            return;
        }
        let y = h - (depth as f64 + 1.0) * ROW;
        // A warm colour derived from the name, so a function keeps its colour.
        let hash = name
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
        let (r, g) = (200 + hash % 55, 80 + (hash / 55) % 120);
        let label: String = if w > 30.0 {
            name.chars().take(((w - 4.0) / 6.6) as usize).collect()
        } else {
            String::new()
        };
        let _ = writeln!(
            svg,
            r#"<g><title>{} ({} samples)</title><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="rgb({r},{g},60)" stroke="white" stroke-width="0.5"/><text x="{:.1}" y="{:.1}">{}</text></g>"#,
            escape(name),
            node.total,
            ROW - 1.0,
            x + 2.0,
            y + ROW - 4.0,
            escape(&label)
        );
        let mut cx = x;
        for (child_name, child) in &node.children {
            draw(svg, child_name, child, cx, depth + 1, scale, h);
            cx += child.total as f64 * scale;
        }
    }
    let scale = (W - 20.0) / root.total.max(1) as f64;
    draw(&mut svg, "all", &root, 10.0, 0, scale, h);
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The heaviest leaf functions (self time), share of samples, largest first.
pub fn hot_leaves(folded: &BTreeMap<String, u64>, top: usize) -> Vec<(String, f64)> {
    let total: u64 = folded.values().sum();
    let mut by_leaf: HashMap<&str, u64> = HashMap::new();
    for (stack, count) in folded {
        *by_leaf
            .entry(stack.rsplit(';').next().unwrap_or("?"))
            .or_default() += count;
    }
    let mut v: Vec<(String, f64)> = by_leaf
        .into_iter()
        .map(|(k, c)| (k.to_owned(), c as f64 / total.max(1) as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(top);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "tokio-rt-worker \n\t    55d0c0a1 aes::soft::encrypt+0x12 (/tern)\n\t    55d0c0b2 tern_gs::udp::push_data+0x40 (/tern)\n\t    55d0c0c3 tokio::runtime::task::poll (/tern)\n\ntokio-rt-worker \n\t    55d0c0a1 aes::soft::encrypt+0x20 (/tern)\n\t    55d0c0b2 tern_gs::udp::push_data+0x44 (/tern)\n\t    55d0c0c3 tokio::runtime::task::poll (/tern)\n\nsqlite-writer \n\t    7f00 fsync (/libc.so)\n";

    #[test]
    fn folds_samples_root_first() {
        let f = fold(SCRIPT);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(
            f["tokio-rt-worker;tokio::runtime::task::poll;tern_gs::udp::push_data;aes::soft::encrypt"],
            2
        );
        assert_eq!(f["sqlite-writer;fsync"], 1);
    }

    #[test]
    fn flame_graph_and_hot_leaves() {
        let f = fold(SCRIPT);
        let svg = flame_svg(&f, "tern <under load>");
        assert!(svg.contains("tern &lt;under load&gt; (3 samples)"));
        assert!(svg.contains("<title>aes::soft::encrypt (2 samples)</title>"));
        let hot = hot_leaves(&f, 1);
        assert_eq!(hot[0].0, "aes::soft::encrypt");
        assert!((hot[0].1 - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn thread_split_by_name() {
        let before = HashMap::from([
            (1, ("worker".to_owned(), 10)),
            (2, ("worker".to_owned(), 5)),
        ]);
        let after = HashMap::from([
            (1, ("worker".to_owned(), 30)),
            (2, ("worker".to_owned(), 15)),
            (3, ("sqlite".to_owned(), 3)),
        ]);
        let split = thread_split(&before, &after, 1.0);
        assert_eq!(split[0].0, "worker");
        assert_eq!(split[1].0, "sqlite");
        assert!(split[0].1 > split[1].1);
        assert!(!thread_ticks(std::process::id()).is_empty());
    }
}
