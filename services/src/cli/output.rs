//! Tables and progress bars for the command line.

use comfy_table::{Cell, Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A borderless, aligned table (easy to read and to `awk`), with a header row.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<Cell>,
{
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header);
    t
}

/// Prints a table followed by a newline.
pub fn print(t: &Table) {
    // comfy-table pads the first column with a leading space; trim it for tidiness.
    for line in t.to_string().lines() {
        println!("{}", line.strip_prefix(' ').unwrap_or(line).trim_end());
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal. `total` of `None` is a
/// spinner with a count.
pub fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = match total {
        Some(_) => {
            format!("{{spinner}} {what} {{bar:40}} {{pos}}/{{len}} ({{per_sec}}, {{eta}} left)")
        }
        None => format!("{{spinner}} {what} {{pos}} ({{per_sec}})"),
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}
