//! The debug page (Go: `/debug/rpc`): services, their methods with call and error counts,
//! and the server's live statistics, as HTML (a heading, tables, a refresh link, no script)
//! or as JSON. Pure rendering: the caller takes the snapshots.
//!
//! Every name is escaped: a service may be registered as `A<b>` and must show as text.

use std::fmt::Write;

use crate::error_body::ErrorCode;
use crate::http::HttpStats;
use crate::stats::{MethodStats, ServerStats, ERROR_CODE_SLOTS};

/// What the page shows, taken at one moment.
#[derive(Debug)]
pub(crate) struct DebugSnapshot<'a> {
    /// Sorted by service, then method (as `Server::method_stats` returns them).
    pub(crate) methods: &'a [MethodStats],
    pub(crate) server: &'a ServerStats,
    pub(crate) http: &'a HttpStats,
    /// The page's own path, for the refresh link.
    pub(crate) page_path: &'a str,
}

impl DebugSnapshot<'_> {
    /// The page as an HTML document.
    pub(crate) fn to_html(&self) -> String {
        let path = escape_html(self.page_path);
        let mut page = String::with_capacity(4096);
        page.push_str(concat!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<title>netrpc services</title>\n<style>\n",
            "body { font-family: sans-serif; margin: 2em; color: #222; }\n",
            "table { border-collapse: collapse; margin-bottom: 1.5em; }\n",
            "th, td { border: 1px solid #bbb; padding: 4px 12px; text-align: left; }\n",
            "th { background: #eee; }\n",
            "td.count { text-align: right; font-variant-numeric: tabular-nums; }\n",
            ".figures { display: flex; flex-wrap: wrap; gap: 0 3em; }\n",
            "</style>\n</head>\n<body>\n<h1>netrpc services</h1>\n",
        ));
        let _ = writeln!(
            page,
            "<p><a href=\"{path}\">Refresh</a> &middot; <a href=\"{path}.json\">JSON</a></p>"
        );
        if self.methods.is_empty() {
            page.push_str("<p>No services registered.</p>\n");
        }
        for (service, methods) in by_service(self.methods) {
            let _ = writeln!(page, "<h2>Service {}</h2>", escape_html(service));
            page.push_str("<table>\n<tr><th>Method</th><th>Calls</th><th>Errors</th></tr>\n");
            for method in methods {
                let _ = writeln!(
                    page,
                    "<tr><td>{}</td><td class=\"count\">{}</td><td class=\"count\">{}</td></tr>",
                    escape_html(&method.method),
                    method.calls,
                    method.errors
                );
            }
            page.push_str("</table>\n");
        }
        page.push_str("<div class=\"figures\">\n");
        push_figures_table(&mut page, "Server", &server_figures(self.server));
        push_figures_table(&mut page, "HTTP listener", &http_figures(self.http));
        page.push_str("</div>\n</body>\n</html>\n");
        page
    }

    /// The same data as a JSON object: `services` (each with its `methods`), `server` and
    /// `http` (each a flat object of counters).
    pub(crate) fn to_json(&self) -> String {
        let mut json = String::from("{\"services\":[");
        for (index, (service, methods)) in by_service(self.methods).enumerate() {
            if index > 0 {
                json.push(',');
            }
            let _ = write!(json, "{{\"name\":{},\"methods\":[", json_string(service));
            for (index, method) in methods.iter().enumerate() {
                if index > 0 {
                    json.push(',');
                }
                let _ = write!(
                    json,
                    "{{\"name\":{},\"calls\":{},\"errors\":{}}}",
                    json_string(&method.method),
                    method.calls,
                    method.errors
                );
            }
            json.push_str("]}");
        }
        json.push_str("],\"server\":{");
        let server = server_figures(self.server);
        push_json_fields(&mut json, &server);
        json.push_str("},\"http\":{");
        push_json_fields(&mut json, &http_figures(self.http));
        json.push_str("}}");
        json
    }
}

/// The server's statistics by name (the `ServerStats` field names), call errors as
/// `call_errors_<Code>` for the codes seen.
fn server_figures(stats: &ServerStats) -> Vec<(String, u64)> {
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let mut figures: Vec<(String, u64)> = [
        ("open_connections", as_u64(stats.open_connections)),
        ("in_flight_calls", as_u64(stats.in_flight_calls)),
        ("running_handlers", as_u64(stats.running_handlers)),
        ("max_running_handlers", as_u64(stats.max_running_handlers)),
        ("queued_outbound_bytes", as_u64(stats.queued_outbound_bytes)),
        ("accepted_connections", stats.accepted_connections),
        ("refused_connections", stats.refused_connections),
        ("frame_errors", stats.frame_errors),
        ("frame_timeouts", stats.frame_timeouts),
        ("duplicate_requests", stats.duplicate_requests),
        ("dropped_replies", stats.dropped_replies),
        ("read_pauses", stats.read_pauses),
        ("idle_closes", stats.idle_closes),
        ("first_frame_timeouts", stats.first_frame_timeouts),
        ("cancels", stats.cancels),
        ("tls_errors", stats.tls_errors),
        ("frames_read_by_workers", stats.frames_read_by_workers),
        ("loop_hand_offs", stats.loop_hand_offs),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    for code in 0..ERROR_CODE_SLOTS {
        let count = stats.call_errors.get(code).copied().unwrap_or(0);
        if count > 0 {
            let code = ErrorCode::from_u16(u16::try_from(code).unwrap_or(u16::MAX));
            figures.push((format!("call_errors_{code:?}"), count));
        }
    }
    figures
}

/// The HTTP listener's statistics by name (the `HttpStats` field names).
fn http_figures(stats: &HttpStats) -> Vec<(String, u64)> {
    let in_progress = u64::try_from(stats.handshakes_in_progress).unwrap_or(u64::MAX);
    [
        ("handshakes_in_progress", in_progress),
        ("rpc_connections", stats.rpc_connections),
        ("pages_served", stats.pages_served),
        ("rejected_requests", stats.rejected_requests),
        ("abandoned_heads", stats.abandoned_heads),
        ("evicted_heads", stats.evicted_heads),
        ("refused_busy", stats.refused_busy),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// `methods` grouped by service, keeping their order (they arrive sorted by service).
fn by_service(methods: &[MethodStats]) -> impl Iterator<Item = (&str, &[MethodStats])> {
    methods
        .chunk_by(|a, b| a.service == b.service)
        .map(|group| (group[0].service.as_str(), group))
}

/// A section of statistics: a heading and a two-column table.
fn push_figures_table(page: &mut String, title: &str, figures: &[(String, u64)]) {
    let _ = writeln!(page, "<section>\n<h2>{}</h2>", escape_html(title));
    page.push_str("<table>\n<tr><th>Statistic</th><th>Value</th></tr>\n");
    for (name, value) in figures {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td class=\"count\">{value}</td></tr>",
            escape_html(name)
        );
    }
    page.push_str("</table>\n</section>\n");
}

fn push_json_fields(json: &mut String, fields: &[(String, u64)]) {
    for (index, (name, value)) in fields.iter().enumerate() {
        if index > 0 {
            json.push(',');
        }
        let _ = write!(json, "{}:{value}", json_string(name));
    }
}

/// `text` with `& < > " '` replaced by entities, safe inside elements and quoted attributes.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as a JSON string literal, quotes included.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(service: &str, method: &str, calls: u64, errors: u64) -> MethodStats {
        MethodStats {
            service: service.to_owned(),
            method: method.to_owned(),
            calls,
            errors,
        }
    }

    #[test]
    fn html_escapes_every_name_and_shows_the_counts() {
        let methods = [
            method("A<b>", "X&Y", 2, 1),
            method("Arith", "Divide", 3, 1),
            method("Arith", "Multiply", 5, 0),
        ];
        let server = ServerStats::default();
        let http = HttpStats::default();
        let snapshot = DebugSnapshot {
            methods: &methods,
            server: &server,
            http: &http,
            page_path: "/debug/\"rpc\"",
        };
        let html = snapshot.to_html();
        assert!(html.contains("<h2>Service A&lt;b&gt;</h2>"), "{html}");
        assert!(html.contains("<td>X&amp;Y</td>"), "{html}");
        assert!(!html.contains("A<b>"), "{html}");
        assert!(html.contains("href=\"/debug/&quot;rpc&quot;\""), "{html}");
        assert!(html.contains(
            "<tr><td>Divide</td><td class=\"count\">3</td><td class=\"count\">1</td></tr>"
        ));
        assert_eq!(html.matches("<h2>Service Arith</h2>").count(), 1);
    }

    #[test]
    fn json_groups_methods_by_service_and_escapes_strings() {
        let methods = [method("Q\"\\", "M\n", 1, 0), method("Z", "N", 4, 2)];
        let mut server = ServerStats {
            open_connections: 3,
            ..ServerStats::default()
        };
        server.call_errors[4] = 2;
        let http = HttpStats {
            rpc_connections: 7,
            ..HttpStats::default()
        };
        let snapshot = DebugSnapshot {
            methods: &methods,
            server: &server,
            http: &http,
            page_path: "/debug/rpc",
        };
        let json = snapshot.to_json();
        assert!(json.starts_with(
            "{\"services\":[{\"name\":\"Q\\\"\\\\\",\"methods\":[{\"name\":\"M\\n\",\"calls\":1,"
        ));
        assert!(json
            .contains("{\"name\":\"Z\",\"methods\":[{\"name\":\"N\",\"calls\":4,\"errors\":2}]}"));
        assert!(json.contains("\"open_connections\":3"));
        assert!(json.contains("\"call_errors_Service\":2"));
        assert!(json.contains("\"http\":{\"handshakes_in_progress\":0,\"rpc_connections\":7"));
        assert!(json.ends_with("}}"));
    }
}
