//! Just enough of GitHub's Markdown for `tests/docs.rs`: headings and their
//! anchors, links, fenced code blocks and the marker comments above them.
//! Indented code blocks and inline code hold no headings nor links.

use std::path::{Path, PathBuf};

/// The directives a marker may give (see `tests/docs.rs`).
const DIRECTIVES: [&str; 9] = [
    "excerpt",
    "run",
    "tested by",
    "not run:",
    "syntax",
    "with",
    "in",
    "toml only:",
    "as the test's user:",
];

/// A page of the documentation.
pub(crate) struct Page {
    /// Canonical path.
    pub(crate) path: PathBuf,
    headings: Vec<String>,
    /// (line, target) of every link and image.
    links: Vec<(usize, String)>,
    pub(crate) blocks: Vec<Block>,
}

/// A fenced code block.
pub(crate) struct Block {
    /// The line of its opening fence, from 1.
    pub(crate) line: usize,
    /// Its info string's first word: `toml`, `python`, ... (may be empty).
    pub(crate) lang: String,
    pub(crate) text: String,
    /// The `docs:` comments right above it, without that prefix.
    directives: Vec<String>,
}

impl Block {
    /// The rest of the directive that starts with `name`, if given.
    pub(crate) fn directive(&self, name: &str) -> Option<String> {
        self.directives.iter().find_map(|d| {
            let rest = d.strip_prefix(name)?;
            let whole_word =
                name.ends_with(':') || rest.is_empty() || rest.starts_with(char::is_whitespace);
            whole_word.then(|| rest.trim().to_owned())
        })
    }

    /// Every directive is a known one.
    pub(crate) fn check_directives(&self) -> Result<(), String> {
        match self
            .directives
            .iter()
            .find(|d| !DIRECTIVES.iter().any(|k| d.starts_with(k)))
        {
            Some(d) => Err(format!("unknown marker `docs: {d}`")),
            None => Ok(()),
        }
    }
}

impl Page {
    pub(crate) fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap();
        Self::parse(&path.canonicalize().unwrap(), &text)
    }

    /// The path relative to the repository, for messages.
    pub(crate) fn name(&self) -> String {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .canonicalize()
            .unwrap();
        let name = self.path.strip_prefix(&repo).unwrap_or(&self.path);
        name.display().to_string()
    }

    pub(crate) fn parse(path: &Path, text: &str) -> Self {
        let mut page = Page {
            path: path.to_owned(),
            headings: Vec::new(),
            links: Vec::new(),
            blocks: Vec::new(),
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut comments: Vec<String> = Vec::new();
        let mut previous_blank = true;
        let mut in_indented = false;
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            if let Some(fence) = line.trim_start().strip_prefix("```") {
                let start = i;
                let mut body = Vec::new();
                i += 1;
                while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                    body.push(lines[i]);
                    i += 1;
                }
                page.blocks.push(Block {
                    line: start + 1,
                    lang: fence.split_whitespace().next().unwrap_or("").to_owned(),
                    text: body.iter().map(|l| format!("{l}\n")).collect(),
                    directives: std::mem::take(&mut comments),
                });
                i += 1;
                previous_blank = false;
                continue;
            }
            if line.trim_start().starts_with("<!--") {
                let mut comment = line.trim_start().trim_start_matches("<!--").to_owned();
                while !comment.contains("-->") && i + 1 < lines.len() {
                    i += 1;
                    comment.push('\n');
                    comment.push_str(lines[i]);
                }
                let comment = comment.split("-->").next().unwrap_or_default().trim();
                if let Some(directive) = comment.strip_prefix("docs:") {
                    comments.push(directive.trim().to_owned());
                }
                i += 1;
                continue;
            }
            let blank = line.trim().is_empty();
            in_indented = !blank && line.starts_with("    ") && (previous_blank || in_indented);
            if !blank && !in_indented {
                comments.clear();
                if let Some(heading) = heading(line) {
                    page.headings.push(heading.to_owned());
                }
                for target in link_targets(line) {
                    page.links.push((i + 1, target));
                }
            }
            previous_blank = blank;
            i += 1;
        }
        page
    }

    /// The anchors of the page's headings, as GitHub makes them: the text
    /// lower-cased, without the characters that are neither letters,
    /// digits, `-`, `_` nor spaces, spaces as `-`; a repeated one gets
    /// `-1`, `-2`, ...
    pub(crate) fn anchors(&self) -> Vec<String> {
        let mut anchors: Vec<String> = Vec::new();
        for heading in &self.headings {
            let text = strip_links(heading);
            let base: String = text
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            let mut anchor = base.clone();
            let mut n = 0;
            while anchors.contains(&anchor) {
                n += 1;
                anchor = format!("{base}-{n}");
            }
            anchors.push(anchor);
        }
        anchors
    }

    /// (line, target) of every link and image outside code.
    pub(crate) fn links(&self) -> &[(usize, String)] {
        &self.links
    }
}

/// The text of an ATX heading (`# ...` to `###### ...`).
fn heading(line: &str) -> Option<&str> {
    let hashes = line.len() - line.trim_start_matches('#').len();
    let rest = &line[hashes..];
    ((1..=6).contains(&hashes) && rest.starts_with(' ')).then(|| rest.trim())
}

/// `line` without its inline code spans.
fn without_code(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// The targets of `[text](target)` and `![alt](target)` outside code.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        if rest[..at].contains('[') {
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.to_owned());
        }
        rest = &after[end..];
    }
    targets
}

/// `[text](target)` as `text`, the rest as is.
fn strip_links(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](") else {
            break;
        };
        let Some(end) = rest[open + close..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..open + close]);
        rest = &rest[open + close + end + 1..];
    }
    out.push_str(rest);
    out
}
