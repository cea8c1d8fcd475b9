//! What the startup log shows of an http queue's options: header values
//! masked, unless they only name a variable (`"env:NAME"`), since a header
//! written in the file may well be a token. (Passwords in URLs are masked
//! for every handler.)

/// Masks the values of `headers` in a queue's `[queues.<q>.http]` table.
pub(crate) fn mask_secrets(options: &mut toml::Table) {
    let Some(toml::Value::Table(headers)) = options.get_mut("headers") else {
        return;
    };
    for (_, value) in headers.iter_mut() {
        if !value.as_str().is_some_and(|s| s.starts_with("env:")) {
            *value = toml::Value::String("***".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::handlers::Registry;

    #[test]
    fn header_values_are_masked_in_the_startup_log_unless_they_name_a_variable() {
        let c = Config::from_toml(
            "[queues.hooks]\nhandler = \"http\"\n[queues.hooks.http]\n\
             url = \"https://user:url-secret@h/x\"\n\
             headers = { Authorization = \"Bearer literal-secret\", X-Key = \"env:KEY\" }\n",
        )
        .expect("parses");
        let shown = Registry::builtin().masked_toml(&c);
        assert!(
            !shown.contains("url-secret") && !shown.contains("literal-secret"),
            "{shown}"
        );
        assert!(
            shown.contains("https://user:***@h/x") && shown.contains("env:KEY"),
            "{shown}"
        );
    }
}
