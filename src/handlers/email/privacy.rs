//! Keeping addresses and the password out of logs, errors and events.
//!
//! Logs may name a recipient's domain (`a***@example.com`): an operator needs
//! to see which provider refuses mail. Error strings may not even do that:
//! they end up in the dead letter list and in public lifecycle events, so
//! every address in them, including the ones a server quotes back in its
//! reply, becomes `<address>`.

use lettre::message::Mailbox;

use crate::config::Secret;

/// `alice@example.com` as `a***@example.com`; a display name is dropped.
pub(crate) fn mask(mailbox: &Mailbox) -> String {
    let user = mailbox.email.user();
    let first: String = user.chars().take(1).collect();
    format!("{first}***@{}", mailbox.email.domain())
}

/// A list of mailboxes, masked and comma-separated.
pub(crate) fn mask_all<'a>(mailboxes: impl IntoIterator<Item = &'a Mailbox>) -> String {
    mailboxes
        .into_iter()
        .map(mask)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text from outside (a server's reply, a library's error) with every
/// address replaced by `<address>` and the password, should it appear, by
/// `***`.
pub(crate) fn scrub(text: &str, password: Option<&Secret>) -> String {
    let mut out = scrub_addresses(text);
    if let Some(pw) = password.map(Secret::expose).filter(|p| !p.is_empty()) {
        out = out.replace(pw, "***");
    }
    out
}

/// Characters that cannot be part of an unquoted address.
fn is_delimiter(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | ':' | '\''
        )
}

fn scrub_addresses(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut start_of_pending = 0; // chars[start_of_pending..i] not yet copied
    while i < chars.len() {
        if chars[i] != '@' {
            i += 1;
            continue;
        }
        // Walk left over the local part (a quoted one included), right over the domain.
        let mut left = i;
        if left > 0 && chars[left - 1] == '"' {
            left -= 1;
            while left > start_of_pending && chars[left - 1] != '"' {
                left -= 1;
            }
            left = left.saturating_sub(1).max(start_of_pending);
        } else {
            while left > start_of_pending
                && !is_delimiter(chars[left - 1])
                && chars[left - 1] != '"'
            {
                left -= 1;
            }
        }
        let mut right = i + 1;
        while right < chars.len() && !is_delimiter(chars[right]) && chars[right] != '"' {
            right += 1;
        }
        // A '.' that ends a sentence is not part of the domain before it.
        while right > i + 1 && chars[right - 1] == '.' {
            right -= 1;
        }
        // A lone '@' (nothing on either side) is not an address.
        if left == i && right == i + 1 {
            i += 1;
            continue;
        }
        out.extend(&chars[start_of_pending..left]);
        out.push_str("<address>");
        start_of_pending = right;
        i = right;
    }
    out.extend(&chars[start_of_pending..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(s: &str) -> Mailbox {
        s.parse().expect("valid mailbox")
    }

    #[test]
    fn masks_keep_the_first_letter_and_the_domain() {
        assert_eq!(mask(&mailbox("alice@example.com")), "a***@example.com");
        assert_eq!(
            mask(&mailbox("Alice <alice@example.com>")),
            "a***@example.com"
        );
        assert_eq!(
            mask_all(&[mailbox("bob@x.org"), mailbox("éva@y.net")]),
            "b***@x.org, é***@y.net"
        );
    }

    #[test]
    fn scrub_removes_every_address() {
        let cases = [
            (
                "550 5.1.1 <bob@example.com>: Recipient address rejected",
                "550 5.1.1 <<address>>: Recipient address rejected",
            ),
            (
                "rejected bob@example.com, carol@x.org.",
                "rejected <address>, <address>.",
            ),
            ("from \"john doe\"@example.com ok", "from <address> ok"),
            ("user@host", "<address>"),
            ("no address here @ all", "no address here @ all"),
            ("(alice@x.org)", "(<address>)"),
        ];
        for (input, want) in cases {
            assert_eq!(scrub(input, None), want, "{input}");
        }
    }

    #[test]
    fn scrub_removes_the_password() {
        let pw = Secret::new("hunter2");
        assert_eq!(scrub("bad hunter2 here", Some(&pw)), "bad *** here");
        assert_eq!(scrub("nothing", Some(&Secret::new(""))), "nothing");
    }
}
