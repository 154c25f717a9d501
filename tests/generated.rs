//! The committed completion scripts (`completions/`) and man pages (`man/`) must equal
//! what the current command-line definitions generate. To regenerate them after a change
//! to `src/cli.rs`:
//!
//!     TWISTCTL_REGENERATE=1 cargo test --test generated
use std::fs;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

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
    let command = twistctl::cli::command();
    files.push((Path::new("man").join("twistctl.1"), render_man(&command)));
    // Built, each subcommand has its bin name (`twistctl conntest`, for the synopsis)
    // and the global -v/-q among its options.
    let mut built = command.clone();
    built.build();
    for sub in command.get_subcommands() {
        let Some(sub) = built.find_subcommand(sub.get_name()) else {
            continue;
        };
        let name = format!("twistctl-{}", sub.get_name());
        // The page's own name, so that `.TH` and NAME say twistctl-conntest.
        let page = sub
            .clone()
            .display_name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        files.push((
            Path::new("man").join(format!("{name}.1")),
            render_man(&page),
        ));
    }
    files
}

/// A man page in the usual order; the `EXAMPLES:` and `EXIT STATUS:` parts of the
/// long help become sections of their own (clap_mangen would put them all under
/// EXTRA).
fn render_man(command: &clap::Command) -> Vec<u8> {
    let after = command
        .get_after_long_help()
        .map(|text| text.to_string())
        .unwrap_or_default();
    let man = clap_mangen::Man::new(command.clone().after_long_help(None::<&str>))
        .source(format!("twistctl {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    let rendered = (|| -> std::io::Result<()> {
        man.render_title(&mut page)?;
        man.render_name_section(&mut page)?;
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        if command.get_arguments().any(|arg| !arg.is_hide_set()) {
            man.render_options_section(&mut page)?;
        }
        if command.has_subcommands() {
            man.render_subcommands_section(&mut page)?;
        }
        page.extend_from_slice(&help_sections(&after));
        man.render_version_section(&mut page)
    })();
    rendered.expect("rendering to memory cannot fail");
    // Each part rendered alone starts with the same two-line preamble: keep the first.
    let text = String::from_utf8(page).expect("roff is text");
    let preamble = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    let body = text
        .strip_prefix(preamble)
        .unwrap_or(&text)
        .replace(preamble, "");
    format!("{preamble}{body}").into_bytes()
}

/// `HEADING:` lines start sections; the lines under each are kept as written.
fn help_sections(text: &str) -> Vec<u8> {
    let mut roff = String::new();
    let mut open = false;
    for line in text.lines() {
        let is_heading = line.ends_with(':')
            && !line.starts_with(' ')
            && line
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == ' ' || c == ':');
        if is_heading {
            if open {
                roff.push_str(".fi\n");
            }
            roff.push_str(&format!(".SH \"{}\"\n.nf\n", line.trim_end_matches(':')));
            open = true;
        } else if open && !line.trim().is_empty() {
            let escaped = line.replace('\\', "\\e").replace('-', "\\-");
            let guard = if escaped.starts_with(['.', '\'']) {
                "\\&"
            } else {
                ""
            };
            roff.push_str(&format!("{guard}{escaped}\n"));
        }
    }
    if open {
        roff.push_str(".fi\n");
    }
    roff.into_bytes()
}

#[test]
fn subcommand_man_pages_name_twistctl_sub_and_have_their_own_sections() {
    for (path, content) in generated_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(sub) = name
            .strip_prefix("twistctl-")
            .and_then(|n| n.strip_suffix(".1"))
        else {
            continue;
        };
        let page = String::from_utf8(content).unwrap();
        let synopsis = page.split(".SH SYNOPSIS").nth(1).unwrap_or_default();
        assert!(
            synopsis.starts_with(&format!("\n\\fBtwistctl {}\\fR", sub.replace('-', "\\-"))),
            "{name}: {synopsis:.80}"
        );
        assert!(
            page.contains("\\-v\\fR, \\fB\\-\\-verbose"),
            "{name} lists -v"
        );
        assert!(
            page.contains("\\-q\\fR, \\fB\\-\\-quiet"),
            "{name} lists -q"
        );
        assert!(page.contains(".SH \"EXAMPLES\""), "{name}");
        assert!(page.contains(".SH \"EXIT STATUS\""), "{name}");
        assert!(!page.contains(".SH EXTRA"), "{name}");
    }
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
