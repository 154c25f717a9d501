//! The committed completion scripts (`completions/`) and man pages (`man/`) must equal
//! what the current command-line definitions generate. To regenerate them after a change
//! to `src/cli.rs`:
//!
//!     TWISTCTL_REGENERATE=1 cargo test --test generated
use std::fs;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use twistctl::cli::Cli;

const REGENERATE: &str = "TWISTCTL_REGENERATE=1 cargo test --test generated";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every generated file: path relative to the repository root, and its content.
fn generated_files() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for (shell, name) in [
        (Shell::Bash, "twistctl.bash"),
        (Shell::Zsh, "_twistctl"),
        (Shell::Fish, "twistctl.fish"),
        (Shell::Elvish, "twistctl.elv"),
        (Shell::PowerShell, "_twistctl.ps1"),
    ] {
        let mut script = Vec::new();
        twistctl::commands::completions::generate(shell, &mut script);
        files.push((Path::new("completions").join(name), script));
    }
    let command = Cli::command();
    files.push((Path::new("man").join("twistctl.1"), render_man(&command)));
    for sub in command.get_subcommands() {
        let name = format!("twistctl-{}", sub.get_name());
        // The page's own name, so that `.TH` and NAME say twistctl-conntest.
        let page = sub
            .clone()
            .name(name.clone())
            .display_name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        files.push((
            Path::new("man").join(format!("{name}.1")),
            render_man(&page),
        ));
    }
    files
}

fn render_man(command: &clap::Command) -> Vec<u8> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .expect("rendering to memory cannot fail");
    page
}

#[test]
fn committed_completions_and_man_pages_are_current() {
    let regenerate = std::env::var_os("TWISTCTL_REGENERATE").is_some();
    let mut stale = Vec::new();
    for (path, content) in generated_files() {
        let full = root().join(&path);
        if regenerate {
            fs::create_dir_all(full.parent().expect("files live in a folder")).expect("mkdir");
            fs::write(&full, &content).expect("write generated file");
            continue;
        }
        if fs::read(&full).ok().as_deref() != Some(&content[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "generated files differ from what src/cli.rs produces: {stale:?}\nregenerate with: {REGENERATE}"
    );
}

#[test]
fn no_man_page_is_left_over_from_a_removed_subcommand() {
    let expected: Vec<String> = generated_files()
        .into_iter()
        .filter(|(p, _)| p.starts_with("man"))
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for entry in fs::read_dir(root().join("man")).expect("man/ exists") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            expected.contains(&name),
            "man/{name} is not generated any more; remove it"
        );
    }
}
