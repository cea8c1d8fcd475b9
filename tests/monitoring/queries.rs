//! The dashboard's queries as Grafana sends them, and the metric names a
//! query uses.

use std::collections::BTreeSet;

use serde_json::Value;

/// Every panel's title and the `expr` of each of its targets.
pub(crate) fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().to_owned();
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

/// `expr` as Grafana sends it, with `queue` chosen in the `$queue`
/// variable (a name, or `.*` for All) and a minute's rate interval.
pub(crate) fn as_grafana_sends(expr: &str, queue: &str) -> String {
    let sent = expr
        .replace("$__rate_interval", "1m")
        .replace("${queue}", queue)
        .replace("$queue", queue);
    assert!(
        !sent.contains('$'),
        "a Grafana variable this test does not know in {expr}"
    );
    sent
}

/// The metric names `expr` uses: conveyor's own, and Prometheus's `up`.
pub(crate) fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut rest = expr;
    while let Some(at) = rest.find(|c: char| ident(c)) {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        let word = &tail[..end];
        let starts_word = at == 0 || !rest[..at].ends_with(['"', '.']);
        if starts_word && (word.starts_with("conveyor_") || tail.starts_with("up{")) {
            names.insert(word.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn metric_names_finds_the_names_and_not_labels_or_functions() {
    let expr = r#"max(conveyor_nodes) == 0 or absent(up{job="conveyor_x"} == 1)"#;
    let want: BTreeSet<String> = ["conveyor_nodes", "up"].map(String::from).into();
    assert_eq!(metric_names(expr), want);
}
