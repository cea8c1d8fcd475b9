//! Bodies rendered from templates with minijinja.
//!
//! Template `welcome` is the pair `welcome.txt` (the plain-text part) and
//! `welcome.html` (the HTML part, auto-escaped) in `[email] templates`; either
//! may be missing, not both. A job's `vars` are the variables. A variable the
//! template uses and the job does not give is an error (strict undefined
//! behaviour), not an empty string: a mail saying "Dear ," is worse than a
//! dead job with a reason.
//!
//! Templates are read on first use and re-read when their file changes
//! (minijinja checks the file's mtime and size on each lookup), so editing a
//! template needs no restart.

use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value, path_loader};
use serde_json::Map;

use super::message::Content;

/// The templates directory, loaded lazily.
pub(crate) struct Templates {
    env: Environment<'static>,
    dir: PathBuf,
}

/// Why a template cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    /// `[email] templates` is not set.
    #[error("the payload names template {0:?}, but [email] templates is not configured")]
    NotConfigured(String),
    /// A name that could leave the directory or is not a plain name.
    #[error(
        "invalid template name {0:?}: use letters, digits, '_', '-' and '.', \
         with '/' between directories, no leading '.' in any part"
    )]
    BadName(String),
    /// Neither `<name>.txt` nor `<name>.html` exists.
    #[error("template {name:?} not found: neither {name}.txt nor {name}.html is in {dir}")]
    NotFound {
        /// The template's name.
        name: String,
        /// The directory.
        dir: String,
    },
    /// The template does not render with these variables, or does not parse.
    #[error("template {file}: {reason}")]
    Render {
        /// The file.
        file: String,
        /// minijinja's message (without variable values).
        reason: String,
    },
}

impl Templates {
    /// Templates from `dir`; nothing is read yet.
    pub(crate) fn new(dir: &Path) -> Self {
        let mut env = Environment::new();
        env.set_loader(path_loader(dir));
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // minijinja's default escapes `.html` files and leaves `.txt` alone.
        Self {
            env,
            dir: dir.to_owned(),
        }
    }

    /// Renders template `name` with `vars`.
    pub(crate) fn render(
        &self,
        name: &str,
        vars: &Map<String, serde_json::Value>,
    ) -> Result<Content, TemplateError> {
        check_name(name)?;
        let ctx = crate::template_value::from_json(&serde_json::Value::Object(vars.clone()));
        let text = self.render_one(&format!("{name}.txt"), &ctx)?;
        let html = self.render_one(&format!("{name}.html"), &ctx)?;
        if text.is_none() && html.is_none() {
            return Err(TemplateError::NotFound {
                name: name.to_owned(),
                dir: self.dir.display().to_string(),
            });
        }
        Ok(Content { text, html })
    }

    /// `Ok(None)` when the file does not exist.
    fn render_one(&self, file: &str, ctx: &Value) -> Result<Option<String>, TemplateError> {
        let failed = |e: minijinja::Error| TemplateError::Render {
            file: file.to_owned(),
            reason: describe(&e),
        };
        let template = match self.env.get_template(file) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::TemplateNotFound => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        template.render(ctx).map(Some).map_err(failed)
    }
}

/// minijinja's message without its debug section (which lists variable
/// values, and so may contain addresses): kind, detail, and where.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(detail) = e.detail() {
        s.push_str(": ");
        s.push_str(detail);
    }
    if let Some(line) = e.line() {
        s.push_str(&format!(" (line {line})"));
    }
    s
}

fn check_name(name: &str) -> Result<(), TemplateError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(TemplateError::BadName(name.chars().take(60).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn templates(files: &[(&str, &str)]) -> (tempfile::TempDir, Templates) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        let t = Templates::new(dir.path());
        (dir, t)
    }

    fn vars(v: serde_json::Value) -> Map<String, serde_json::Value> {
        v.as_object().expect("object").clone()
    }

    #[test]
    fn renders_text_and_html_with_vars() {
        let (_dir, t) = templates(&[
            (
                "welcome.txt",
                "Hello {{ name }}, you have {{ items|length }} items.",
            ),
            ("welcome.html", "<p>Hello {{ name }}</p>"),
            ("only/html.html", "<b>{{ n }}</b>"),
        ]);
        let c = t
            .render(
                "welcome",
                &vars(json!({"name": "Ann & Bo", "items": [1, 2]})),
            )
            .expect("renders");
        assert_eq!(c.text.as_deref(), Some("Hello Ann & Bo, you have 2 items."));
        assert_eq!(c.html.as_deref(), Some("<p>Hello Ann &amp; Bo</p>"));
        let c = t
            .render("only/html", &vars(json!({"n": 1.5})))
            .expect("renders");
        assert_eq!((c.text, c.html.as_deref()), (None, Some("<b>1.5</b>")));
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_the_file() {
        let (_dir, t) = templates(&[("w.txt", "line one\nDear {{ name }},")]);
        let err = t.render("w", &Map::new()).unwrap_err().to_string();
        assert!(err.contains("w.txt") && err.contains("undefined"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_missing_template_says_where_it_looked() {
        let (dir, t) = templates(&[]);
        let err = t.render("nope", &Map::new()).unwrap_err().to_string();
        assert!(err.contains("nope.txt nor nope.html"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn names_cannot_leave_the_directory() {
        let (_dir, t) = templates(&[]);
        for bad in [
            "../etc/passwd",
            "/abs",
            ".hidden",
            "a//b",
            "a\\b",
            "",
            "a/../b",
        ] {
            assert!(
                matches!(t.render(bad, &Map::new()), Err(TemplateError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn syntax_errors_are_reported() {
        let (_dir, t) = templates(&[("bad.txt", "{% if %}")]);
        let err = t.render("bad", &Map::new()).unwrap_err().to_string();
        assert!(err.contains("bad.txt") && err.contains("syntax"), "{err}");
    }
}
