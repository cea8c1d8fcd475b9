use super::*;

fn parse(json: &str) -> Result<Request, PayloadError> {
    Request::parse(json)
}

fn err(json: &str) -> String {
    parse(json).unwrap_err().to_string()
}

#[test]
fn the_plain_producer_payload_is_valid() {
    let r = parse(r#"{"to": "alice@example.com", "subject": "Welcome"}"#).expect("valid");
    assert_eq!(r.to.len(), 1);
    assert_eq!(r.subject, "Welcome");
    assert_eq!(
        r.body,
        Body::Given {
            text: None,
            html: None
        }
    );
}

#[test]
fn every_field_is_read() {
    let r = parse(
        r#"{"to": ["a@x.org", "Bo <b@y.org>"], "subject": "s", "text": "t", "html": "<p>h</p>",
            "from": "Me <me@z.org>", "cc": "c@x.org", "bcc": ["d@x.org"], "reply_to": "r@x.org"}"#,
    )
    .expect("valid");
    assert_eq!(r.to[1].name.as_deref(), Some("Bo"));
    assert_eq!(
        r.from.as_ref().map(|m| m.email.to_string()),
        Some("me@z.org".into())
    );
    assert_eq!((r.cc.len(), r.bcc.len(), r.reply_to.len()), (1, 1, 1));
    assert_eq!(r.recipients().count(), 4);
}

#[test]
fn templates_take_vars() {
    let r = parse(r#"{"to": "a@x.org", "subject": "s", "template": "welcome", "vars": {"n": 1}}"#)
        .expect("valid");
    match r.body {
        Body::Template { name, vars } => {
            assert_eq!((name.as_str(), vars["n"].as_i64()), ("welcome", Some(1)))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn mistakes_name_the_field_and_never_the_value() {
    let cases = [
        (r#"{"subject": "s"}"#, "missing field `to`"),
        (r#"{"to": null, "subject": "s"}"#, "missing field `to`"),
        (r#"{"to": "a@x.org"}"#, "missing field `subject`"),
        (
            r#"{"to": [], "subject": "s"}"#,
            "`to` needs at least one address",
        ),
        (
            r#"{"to": "a@x.org", "subject": 5}"#,
            "`subject` must be a string, got a number",
        ),
        (
            r#"{"to": 7, "subject": "s"}"#,
            "`to` must be an address or a list of addresses, got a number",
        ),
        (
            r#"{"to": ["a@x.org", 1], "subject": "s"}"#,
            "`to` must be an address or a list of addresses, got a number",
        ),
        (
            r#"{"to": "a@x.org", "subject": "s", "txt": "hi"}"#,
            "unknown field \"txt\"",
        ),
        (
            r#"{"to": "a@x.org", "subject": "s", "vars": {}}"#,
            "`vars` needs a `template`",
        ),
        (
            r#"{"to": "a@x.org", "subject": "s", "template": "t", "text": "x"}"#,
            "cannot be combined",
        ),
        (
            r#"{"to": "a@x.org", "subject": "s", "template": "t", "vars": []}"#,
            "`vars` must be an object, got a list",
        ),
        (
            r#"{"to": "a@x.org", "subject": "s", "from": ["a@x.org", "b@x.org"]}"#,
            "`from` must be one address",
        ),
        (r#"["a@x.org"]"#, "must be a JSON object"),
    ];
    for (json, want) in cases {
        let e = err(json);
        assert!(e.contains(want), "{json}: {e}");
        assert!(
            !e.contains("x.org"),
            "{json}: the error quotes an address: {e}"
        );
    }
}

#[test]
fn invalid_addresses_are_refused_without_being_quoted() {
    for (json, field) in [
        (r#"{"to": "not-an-address", "subject": "s"}"#, "`to`"),
        (
            r#"{"to": ["ok@x.org", "bad@@x.org"], "subject": "s"}"#,
            "`to` holds an invalid address at index 1",
        ),
        (r#"{"to": "a@x.org", "cc": "a@", "subject": "s"}"#, "`cc`"),
        (
            r#"{"to": "a@x.org, b@y.org", "subject": "s"}"#,
            "`to` holds an invalid address",
        ),
        (r#"{"to": "a@x.org junk", "subject": "s"}"#, "`to`"),
        (
            r#"{"to": "a@x.org", "reply_to": "<r@x.org", "subject": "s"}"#,
            "`reply_to`",
        ),
    ] {
        let e = err(json);
        assert!(e.contains(field), "{json}: {e}");
        assert!(
            !e.contains("x.org") && !e.contains("not-an-address"),
            "{json}: {e}"
        );
    }
}

#[test]
fn odd_but_valid_addresses_pass() {
    for to in [
        "A.B+tag@Example.COM",
        "\"Doe, John\" <john@x.org>",
        "\"a@b\" <c@x.org>",
        "  padded@x.org  ",
        "José <jose@bücher.de>",
    ] {
        let json = serde_json::json!({"to": to, "subject": "s"}).to_string();
        assert!(parse(&json).is_ok(), "{to}: {:?}", parse(&json));
    }
}

fn build(json: &str, keep_bcc: bool) -> String {
    let r = parse(json).expect("valid");
    let content = match &r.body {
        Body::Given { text, html } => Content {
            text: text.clone(),
            html: html.clone(),
        },
        Body::Template { .. } => Content::default(),
    };
    let from: Mailbox = "Default <default@x.org>".parse().expect("from");
    let m = r
        .build(&from, content, "<id-1.conveyor@x.org>".into(), keep_bcc)
        .expect("builds");
    String::from_utf8(m.formatted()).expect("utf8")
}

#[test]
fn messages_carry_the_headers_and_body() {
    let eml = build(
        r#"{"to": "a@x.org", "cc": "c@x.org", "bcc": "d@x.org", "reply_to": "r@x.org", "subject": "Hi", "text": "Hello"}"#,
        false,
    );
    assert!(eml.contains("From: Default <default@x.org>"), "{eml}");
    assert!(
        eml.contains("To: a@x.org") && eml.contains("Cc: c@x.org"),
        "{eml}"
    );
    assert!(
        eml.contains("Reply-To: r@x.org") && eml.contains("Subject: Hi"),
        "{eml}"
    );
    assert!(eml.contains("Message-ID: <id-1.conveyor@x.org>"), "{eml}");
    assert!(!eml.contains("Bcc"), "{eml}");
    assert!(eml.contains("text/plain") && eml.contains("Hello"), "{eml}");
    let kept = build(
        r#"{"to": "a@x.org", "bcc": "d@x.org", "subject": "Hi"}"#,
        true,
    );
    assert!(kept.contains("Bcc: d@x.org"), "{kept}");
}

#[test]
fn text_and_html_make_an_alternative() {
    let eml = build(
        r#"{"to": "a@x.org", "subject": "s", "text": "T", "html": "<b>H</b>"}"#,
        false,
    );
    assert!(eml.contains("multipart/alternative"), "{eml}");
    let html = build(
        r#"{"to": "a@x.org", "subject": "s", "html": "<b>H</b>"}"#,
        false,
    );
    assert!(
        html.contains("text/html") && !html.contains("multipart"),
        "{html}"
    );
}

#[test]
fn many_recipients_build_in_linear_time() {
    // Quadratic header building took minutes here (debug build); linear
    // takes well under a second. The bound is loose for a busy machine.
    let to: Vec<String> = (0..10_000).map(|i| format!("u{i}@x.org")).collect();
    let json = serde_json::json!({"to": to, "cc": ["c1@x.org", "c2@x.org"], "subject": "s"});
    let started = std::time::Instant::now();
    let eml = build(&json.to_string(), false);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(eml.contains("u0@x.org") && eml.contains("u9999@x.org"));
    assert!(
        eml.contains("Cc: c1@x.org, c2@x.org"),
        "both cc in one header"
    );
}
