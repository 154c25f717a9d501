//! Where twistctl keeps files between runs, by the XDG Base Directory rules:
//! configuration (`known_hosts`) under `$XDG_CONFIG_HOME/twistctl`, state (the
//! talk server's generated certificate) under `$XDG_STATE_HOME/twistctl`, with the
//! specification's defaults `~/.config` and `~/.local/state` when a variable is unset,
//! empty or not an absolute path.

use std::path::PathBuf;

/// The folder for twistctl's configuration files.
pub fn config_dir() -> Option<PathBuf> {
    config_dir_with(|name| std::env::var_os(name))
}

/// The folder for twistctl's state files.
pub fn state_dir() -> Option<PathBuf> {
    state_dir_with(|name| std::env::var_os(name))
}

/// [`config_dir`] with the environment given as a lookup (for tests).
pub fn config_dir_with(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    base(&env, "XDG_CONFIG_HOME", &[".config"]).map(|dir| dir.join("twistctl"))
}

/// [`state_dir`] with the environment given as a lookup (for tests).
pub fn state_dir_with(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    base(&env, "XDG_STATE_HOME", &[".local", "state"]).map(|dir| dir.join("twistctl"))
}

fn base(
    env: &impl Fn(&str) -> Option<std::ffi::OsString>,
    variable: &str,
    under_home: &[&str],
) -> Option<PathBuf> {
    // The specification: a relative path in the variable is invalid and ignored.
    if let Some(dir) = env(variable).map(PathBuf::from)
        && dir.is_absolute()
    {
        return Some(dir);
    }
    let home = env("HOME").map(PathBuf::from).filter(|h| h.is_absolute())?;
    Some(under_home.iter().fold(home, |path, part| path.join(part)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn variables_win_when_absolute() {
        let e = env(&[
            ("XDG_CONFIG_HOME", "/cfg"),
            ("XDG_STATE_HOME", "/st"),
            ("HOME", "/home/a"),
        ]);
        assert_eq!(config_dir_with(&e), Some(PathBuf::from("/cfg/twistctl")));
        assert_eq!(state_dir_with(&e), Some(PathBuf::from("/st/twistctl")));
    }

    #[test]
    fn unset_empty_or_relative_variables_fall_back_to_home() {
        for pairs in [
            &[("HOME", "/home/a")][..],
            &[
                ("HOME", "/home/a"),
                ("XDG_CONFIG_HOME", ""),
                ("XDG_STATE_HOME", ""),
            ][..],
            &[
                ("HOME", "/home/a"),
                ("XDG_CONFIG_HOME", "rel"),
                ("XDG_STATE_HOME", "rel"),
            ][..],
        ] {
            let e = env(pairs);
            assert_eq!(
                config_dir_with(&e),
                Some(PathBuf::from("/home/a/.config/twistctl"))
            );
            assert_eq!(
                state_dir_with(&e),
                Some(PathBuf::from("/home/a/.local/state/twistctl"))
            );
        }
    }

    #[test]
    fn no_home_and_no_variable_is_none() {
        assert_eq!(config_dir_with(env(&[])), None);
        assert_eq!(state_dir_with(env(&[("HOME", "relative")])), None);
    }
}
