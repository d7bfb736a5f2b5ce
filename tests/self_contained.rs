//! The project's tests, scripts and benchmarks run from a fresh clone of the repository
//! alone: nothing in it reaches for files beside the checkout.

use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => files(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

#[test]
fn nothing_reaches_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Built at run time so that this file does not name what it looks for.
    let outside = format!("{}/{}/", "..", "shared");
    let mut all = Vec::new();
    files(root, &mut all);
    assert!(
        all.len() > 50,
        "walked only {} files of {}",
        all.len(),
        root.display()
    );
    let offenders: Vec<String> = all
        .iter()
        .filter(|p| {
            fs::read(p)
                .map(|bytes| String::from_utf8_lossy(&bytes).contains(&outside))
                .unwrap_or(false)
        })
        .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "these files use {outside}, which a fresh clone does not have: {offenders:?}"
    );
}

#[test]
fn the_test_command_runs_every_suite_even_when_one_fails() {
    let script = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test.sh"))
        .expect("scripts/test.sh");
    let test_line = script
        .lines()
        .find(|l| l.trim_start().starts_with("cargo test"))
        .expect("scripts/test.sh runs cargo test");
    assert!(test_line.contains("--no-fail-fast"), "{test_line}");
    let ci =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run")).expect(".ci/run");
    assert!(
        ci.contains("scripts/test.sh"),
        ".ci/run must call the README's test command"
    );
}
