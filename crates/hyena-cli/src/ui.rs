//! Terminal output shared by the subcommands: progress bars, progress lines, memory reports.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::alloc::{peak_heap_bytes, peak_rss_bytes};

/// A progress bar of `len` steps drawn with the indicatif `template`.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A line of progress: through the bar on a terminal; straight to stderr in logs, where the
/// bar is hidden (and would swallow its lines) and these lines are the only progress.
pub fn say(bar: &ProgressBar, m: &str) {
    if bar.is_hidden() {
        eprintln!("{m}");
    } else {
        bar.println(m);
    }
}

/// `bytes` in MiB, or "n/a" where it could not be measured.
fn mib(bytes: Option<usize>) -> String {
    bytes
        .map(|v| format!("{:.0} MiB", v as f64 / 1048576.0))
        .unwrap_or_else(|| "n/a".into())
}

/// The time since `t0` and the process's peak heap and resident memory, on stderr.
pub fn print_memory(t0: Instant) {
    eprintln!(
        "time {:.1} s; peak memory: heap {}, resident {}",
        t0.elapsed().as_secs_f64(),
        mib(peak_heap_bytes()),
        mib(peak_rss_bytes())
    );
}

/// A progress bar over the blocks of the record being read, and the callback that drives it
/// (`hyena embed`, `hyena score`).
pub fn record_progress() -> (ProgressBar, hyena::apps::dna::ProgressFn) {
    let bar = bar(0, "{spinner} {msg} {bar:20} {pos}/{len} blocks [{elapsed}]");
    let b = bar.clone();
    let f = Box::new(move |p: &hyena::apps::dna::Progress| {
        b.set_length(p.blocks as u64);
        b.set_position(p.blocks_done as u64);
        b.set_message(format!(
            "record {} '{}' ({} tokens)",
            p.record + 1,
            p.name,
            p.tokens
        ));
    });
    (bar, f)
}

/// What loading a model found worth telling (skipped checkpoint entries, warnings), one line
/// each on stderr; long lists are cut after a few lines.
pub fn print_notes(notes: &[String]) {
    const SHOWN: usize = 6;
    let (warnings, rest): (Vec<&String>, Vec<&String>) =
        notes.iter().partition(|n| n.starts_with("warning"));
    for n in warnings {
        eprintln!("{n}");
    }
    for n in rest.iter().take(SHOWN) {
        eprintln!("note: {n}");
    }
    if rest.len() > SHOWN {
        eprintln!(
            "note: … and {} more entries skipped or unused",
            rest.len() - SHOWN
        );
    }
}
