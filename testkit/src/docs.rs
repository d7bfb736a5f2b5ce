//! The `podvault` commands the documentation shows a user (README.md, docs/*.md and the
//! chart's NOTES.txt), as words the way a shell splits them, so that tests run each one as
//! written.

use std::path::Path;

/// One documented command.
#[derive(Clone, Debug)]
pub struct Documented {
    /// `file:line`, for failure messages.
    pub place: String,
    /// The words after `podvault`.
    pub args: Vec<String>,
}

/// Splits a command line into words as a POSIX shell does for plain text: whitespace
/// separates words, single quotes keep everything, double quotes keep all but `\"` and
/// `\\`, a backslash outside quotes keeps the next character. A `#` starting a word
/// begins a comment.
pub fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\')) => {
                            word.extend(chars.next());
                        }
                        q => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Every `podvault …` command in the shell blocks of README.md and docs/*.md, and in the
/// chart's NOTES.txt (its release namespace taken as `podvault`), under `root` (the
/// repository).
pub fn documented_commands(root: &Path) -> Vec<Documented> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    docs.sort();
    files.extend(
        docs.into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    let mut out = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut in_block = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
                continue;
            }
            if in_block {
                push(&mut out, file, n, line);
            }
        }
    }
    let notes = root.join("helm/podvault/templates/NOTES.txt");
    let text = std::fs::read_to_string(&notes).unwrap_or_default();
    // Its commands are the indented lines.
    for (n, line) in text.lines().enumerate() {
        if line.starts_with(' ') {
            push(
                &mut out,
                &notes,
                n,
                &line.replace("{{ .Release.Namespace }}", "podvault"),
            );
        }
    }
    out
}

fn push(out: &mut Vec<Documented>, file: &Path, n: usize, line: &str) {
    let line = line.trim_start().trim_start_matches("$ ");
    let words = shell_words(line);
    if words.first().map(String::as_str) == Some("podvault") && words.len() > 1 {
        out.push(Documented {
            place: format!("{}:{}", file.display(), n + 1),
            args: words[1..].to_vec(),
        });
    }
}
