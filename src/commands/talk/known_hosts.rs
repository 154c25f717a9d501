//! talk-client's `known_hosts`: the certificates a person chose to trust, one
//! `HOST:PORT SHA256:AB:CD:...` line per server (`[::1]:8443` for IPv6 hosts), `#`
//! comments allowed, like ssh's file of the same name. Fingerprints compare
//! case-insensitively.
//!
//! Reading never fails on a bad line: a line that is not an entry is skipped (and
//! reported to the caller), so one mistyped line does not lock a user out of every
//! server.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The file's name inside twistctl's configuration folder.
pub const FILE_NAME: &str = "known_hosts";

/// The `HOST:PORT` key of a server, with IPv6 hosts in brackets.
pub fn host_key(host: &str, port: u16) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        Ok(IpAddr::V4(v4)) => format!("{v4}:{port}"),
        // Names compare as DNS does: without regard to case.
        Err(_) => format!("{}:{port}", bare.to_ascii_lowercase()),
    }
}

/// One remembered server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `HOST:PORT`, as [`host_key`] writes it.
    pub key: String,
    /// `SHA256:AB:CD:...` as written in the file.
    pub fingerprint: String,
    /// Its line number (from 1), for "edit line N of FILE".
    pub line: usize,
}

/// What the file says about one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No entry for this host and port.
    Unknown,
    /// The entry matches the certificate presented.
    Trusted,
    /// The entry names a different certificate: refuse loudly.
    Changed(Entry),
}

/// The known hosts file, read into memory.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
    /// Lines that are neither comments, blank, nor entries: (line number, text).
    skipped: Vec<(usize, String)>,
}

/// Whether two `SHA256:...` fingerprints are the same (case and an optional
/// `SHA256:` prefix aside).
pub fn same_fingerprint(a: &str, b: &str) -> bool {
    fn bare(f: &str) -> &str {
        let f = f.trim();
        match f.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &f[7..],
            _ => f,
        }
    }
    bare(a).eq_ignore_ascii_case(bare(b))
}

impl KnownHosts {
    /// Reads the file at `path`; a file that does not exist is an empty one.
    pub fn load(path: &Path) -> io::Result<KnownHosts> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(error),
        };
        Ok(KnownHosts::parse(path, &text))
    }

    /// Parses the text of a file found at `path`.
    pub fn parse(path: &Path, text: &str) -> KnownHosts {
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next(), fields.next()) {
                (Some(key), Some(fingerprint), None)
                    if fingerprint.len() > 7
                        && fingerprint[..7].eq_ignore_ascii_case("sha256:") =>
                {
                    entries.push(Entry {
                        key: key.to_owned(),
                        fingerprint: fingerprint.to_owned(),
                        line: index + 1,
                    });
                }
                _ => skipped.push((index + 1, raw.to_owned())),
            }
        }
        KnownHosts {
            path: path.to_owned(),
            entries,
            skipped,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines that could not be read as entries, with their numbers.
    pub fn skipped(&self) -> &[(usize, String)] {
        &self.skipped
    }

    /// The fingerprints remembered for the server `key`, in file order.
    pub fn fingerprints<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.key == key)
            .map(|e| e.fingerprint.as_str())
    }

    /// What the file says about the server `key` presenting `fingerprint`.
    pub fn lookup(&self, key: &str, fingerprint: &str) -> Lookup {
        let mut first_other = None;
        for entry in self.entries.iter().filter(|e| e.key == key) {
            if same_fingerprint(&entry.fingerprint, fingerprint) {
                return Lookup::Trusted;
            }
            first_other.get_or_insert_with(|| entry.clone());
        }
        match first_other {
            Some(entry) => Lookup::Changed(entry),
            None => Lookup::Unknown,
        }
    }

    /// Remembers `key` with `fingerprint`: appends a line to the file, creating the
    /// file and its folder (mode 0700) when needed.
    pub fn remember(&mut self, key: &str, fingerprint: &str) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            create_private_dir(dir)?;
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        // A file whose last line lacks its newline must not swallow the new entry.
        let needs_newline = fs::read(&self.path)
            .map(|bytes| bytes.last().is_some_and(|&b| b != b'\n'))
            .unwrap_or(false);
        let line = format!(
            "{}{key} {fingerprint}\n",
            if needs_newline { "\n" } else { "" }
        );
        file.write_all(line.as_bytes())?;
        let number = self.entries.iter().map(|e| e.line).max().unwrap_or(0) + 1;
        self.entries.push(Entry {
            key: key.to_owned(),
            fingerprint: fingerprint.to_owned(),
            line: number,
        });
        Ok(())
    }
}

/// Creates `dir` (and its parents) with mode 0700 where it does not exist.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The loud refusal for a certificate that changed, in ssh's manner.
#[derive(Debug, Clone)]
pub struct ChangedWarning<'a> {
    /// `HOST:PORT`.
    pub key: &'a str,
    /// The entry that no longer matches.
    pub remembered: &'a Entry,
    /// What the server presented now.
    pub presented: &'a str,
    /// The file.
    pub path: &'a Path,
}

impl fmt::Display for ChangedWarning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "* WARNING: THE CERTIFICATE OF {} HAS CHANGED!", self.key)?;
        writeln!(
            f,
            "* Someone could be eavesdropping on you (a man in the middle), or the server's certificate was replaced."
        )?;
        writeln!(f, "* remembered: {}", self.remembered.fingerprint)?;
        writeln!(f, "* presented:  {}", self.presented)?;
        write!(
            f,
            "* If the change is expected, edit line {} of {}.",
            self.remembered.line,
            self.path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "SHA256:AB:CD:EF";
    const B: &str = "SHA256:01:02:03";

    #[test]
    fn host_keys_bracket_ipv6_and_fold_name_case() {
        assert_eq!(host_key("::1", 8443), "[::1]:8443");
        assert_eq!(host_key("[::1]", 8443), "[::1]:8443");
        assert_eq!(host_key("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(host_key("Chat.Example", 80), "chat.example:80");
    }

    #[test]
    fn fingerprints_compare_without_case() {
        assert!(same_fingerprint("SHA256:ab:cd", "sha256:AB:CD"));
        assert!(same_fingerprint("AB:CD", "SHA256:ab:cd"));
        assert!(!same_fingerprint("SHA256:ab:cd", "SHA256:ab:ce"));
    }

    #[test]
    fn lookup_trusted_changed_unknown() {
        let text = format!(
            "# talk servers\n\nchat.example:8443 {A}\n[::1]:8443 {}\n",
            B.to_lowercase()
        );
        let hosts = KnownHosts::parse(Path::new("/k"), &text);
        assert_eq!(hosts.lookup("chat.example:8443", A), Lookup::Trusted);
        assert_eq!(hosts.lookup("[::1]:8443", B), Lookup::Trusted);
        assert_eq!(hosts.lookup("other:1", A), Lookup::Unknown);
        match hosts.lookup("chat.example:8443", B) {
            Lookup::Changed(entry) => {
                assert_eq!(entry.line, 3);
                assert_eq!(entry.fingerprint, A);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_lines_are_skipped_and_reported() {
        let text = format!("garbage\nhost:1 {A} extra\nhost:2 MD5:xx\nhost:3 {A}\n");
        let hosts = KnownHosts::parse(Path::new("/k"), &text);
        assert_eq!(hosts.lookup("host:3", A), Lookup::Trusted);
        let numbers: Vec<usize> = hosts.skipped().iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![1, 2, 3]);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "twistctl-known-hosts-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn remember_creates_a_private_folder_and_appends() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("remember");
        let path = dir.join("twistctl").join(FILE_NAME);
        let mut hosts = KnownHosts::load(&path).expect("a missing file is empty");
        assert_eq!(hosts.lookup("h:1", A), Lookup::Unknown);
        hosts.remember("h:1", A).expect("remembered");
        hosts.remember("[::1]:2", B).expect("remembered");
        let mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let again = KnownHosts::load(&path).expect("readable");
        assert_eq!(again.lookup("h:1", A), Lookup::Trusted);
        assert_eq!(again.lookup("[::1]:2", B), Lookup::Trusted);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("h:1 {A}\n[::1]:2 {B}\n")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remember_after_a_last_line_without_newline_keeps_both() {
        let dir = temp_dir("newline");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        fs::write(&path, format!("h:1 {A}")).unwrap();
        let mut hosts = KnownHosts::load(&path).unwrap();
        hosts.remember("h:2", B).unwrap();
        let again = KnownHosts::load(&path).unwrap();
        assert_eq!(again.lookup("h:1", A), Lookup::Trusted);
        assert_eq!(again.lookup("h:2", B), Lookup::Trusted);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_changed_warning_shows_both_fingerprints_and_where_to_edit() {
        let entry = Entry {
            key: "h:1".into(),
            fingerprint: A.into(),
            line: 7,
        };
        let text = ChangedWarning {
            key: "h:1",
            remembered: &entry,
            presented: B,
            path: Path::new("/home/a/.config/twistctl/known_hosts"),
        }
        .to_string();
        assert!(text.contains(A) && text.contains(B), "{text}");
        assert!(
            text.contains("edit line 7 of /home/a/.config/twistctl/known_hosts"),
            "{text}"
        );
    }
}
