//! Paths left out of a backup. A pattern without `/` matches a name at any depth
//! (`*.tmp`, `cache`); a pattern with `/` (or starting with `./`) matches the path relative
//! to the backed-up directory, where `*` stays within one name and `**` spans directories (`pg_wal/*.tmp`,
//! `data/**/cache`). A directory that matches is not entered.

use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Compiled exclude patterns.
#[derive(Debug)]
pub struct Excludes {
    by_name: GlobSet,
    by_path: GlobSet,
}

impl Excludes {
    /// Compiles `patterns`; the error names the pattern that is not valid.
    pub fn new(patterns: &[String]) -> crate::Result<Excludes> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for pattern in patterns {
            let trimmed = pattern.trim_start_matches("./").trim_end_matches('/');
            if trimmed.is_empty() || trimmed.starts_with('/') {
                return Err(crate::Error::Exclude {
                    pattern: pattern.clone(),
                    reason: "it must be a non-empty path relative to the backed-up directory"
                        .into(),
                });
            }
            let bad = |e: globset::Error| crate::Error::Exclude {
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            };
            if trimmed.contains('/') || pattern.starts_with("./") {
                let glob = GlobBuilder::new(trimmed)
                    .literal_separator(true)
                    .build()
                    .map_err(bad)?;
                by_path.add(glob);
            } else {
                by_name.add(Glob::new(trimmed).map_err(bad)?);
            }
        }
        let whole = |e: globset::Error| crate::Error::Exclude {
            pattern: patterns.join(" "),
            reason: e.to_string(),
        };
        Ok(Excludes {
            by_name: by_name.build().map_err(whole)?,
            by_path: by_path.build().map_err(whole)?,
        })
    }

    /// Whether `relative` (a path inside the backed-up directory) is left out.
    pub fn matches(&self, relative: &Path) -> bool {
        relative
            .file_name()
            .is_some_and(|name| self.by_name.is_match(name))
            || self.by_path.is_match(relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_anywhere_and_paths_from_the_top() {
        let ex = Excludes::new(&[
            "*.lock".into(),
            "pg_wal/*.tmp".into(),
            "data/**/cache".into(),
            "./logs/".into(),
        ])
        .expect("patterns");
        for yes in [
            "a.lock",
            "x/y/b.lock",
            "pg_wal/1.tmp",
            "data/cache",
            "data/a/b/cache",
            "logs",
        ] {
            assert!(ex.matches(Path::new(yes)), "{yes}");
        }
        for no in [
            "a.locked",
            "pg_wal/sub/1.tmp",
            "x/pg_wal/1.tmp",
            "cache",
            "x/logs",
        ] {
            assert!(!ex.matches(Path::new(no)), "{no}");
        }
        let err = Excludes::new(&["[oops".into()]).expect_err("bad glob");
        assert!(err.to_string().contains("[oops"), "{err}");
        assert!(Excludes::new(&["/abs".into()]).is_err());
    }
}
