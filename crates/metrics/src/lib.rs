//! Prometheus metrics for the server and the daemon: a text-format builder
//! ([`Exposition`]) and a minimal HTTP/1.1 endpoint ([`serve`]) that answers
//! `GET /metrics` and nothing else. Meant for a local port; what it shows
//! (device and rule names) is not for the internet.

mod http;

use std::collections::HashSet;
use std::fmt::Write as _;

pub use http::{Render, bind, serve};

/// Builds one scrape in the Prometheus text format (version 0.0.4).
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    declared: HashSet<String>,
}

impl Exposition {
    /// An empty scrape.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// A gauge sample; `# HELP` and `# TYPE` are written once per name.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, "gauge", help, labels, &format_float(value));
    }

    /// A counter sample (`name` should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, "counter", help, labels, &value.to_string());
    }

    /// The text to serve.
    pub fn finish(self) -> String {
        self.out
    }

    fn sample(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: &str) {
        if self.declared.insert(name.to_owned()) {
            let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        value.to_string()
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help text escapes backslash and newline.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_declares_once_and_escapes_labels() {
        let mut e = Exposition::new();
        e.counter(
            "ztmesh_drops_total",
            "Dropped packets.",
            &[("reason", "no_rule")],
            3,
        );
        e.counter(
            "ztmesh_drops_total",
            "Dropped packets.",
            &[("reason", "a\"b\\c\nd")],
            1,
        );
        e.gauge("ztmesh_up", "Up.", &[], 1.0);
        e.gauge("ztmesh_ratio", "R.", &[("a", "x"), ("b", "y")], 0.5);
        assert_eq!(
            e.finish(),
            "# HELP ztmesh_drops_total Dropped packets.\n\
             # TYPE ztmesh_drops_total counter\n\
             ztmesh_drops_total{reason=\"no_rule\"} 3\n\
             ztmesh_drops_total{reason=\"a\\\"b\\\\c\\nd\"} 1\n\
             # HELP ztmesh_up Up.\n\
             # TYPE ztmesh_up gauge\n\
             ztmesh_up 1\n\
             # HELP ztmesh_ratio R.\n\
             # TYPE ztmesh_ratio gauge\n\
             ztmesh_ratio{a=\"x\",b=\"y\"} 0.5\n"
        );
        assert_eq!(format_float(f64::INFINITY), "+Inf");
    }
}
