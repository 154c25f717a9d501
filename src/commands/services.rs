//! Service names (`ssh`, `https`) to TCP port numbers, from the system's services
//! database (`/etc/services`).
//!
//! The file is parsed here rather than through `getservbyname`, which is not
//! thread-safe and would pull NSS modules into a process that otherwise needs none. It
//! is read only when a port spec actually names a service, so numeric ports cost no
//! file access at all.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the services database lives on every Unix we run on.
pub const SERVICES_PATH: &str = "/etc/services";

/// TCP service names and aliases with their ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services {
    ports: HashMap<String, u16>,
    /// False when the database could not be read: the error message then says so,
    /// instead of calling a real service name unknown.
    available: bool,
}

impl Services {
    /// Parses the text of a services file: `name port/proto [aliases...] [# comment]`.
    /// Only `tcp` entries count; the first entry for a name wins, as with
    /// `getservbyname`. Malformed lines are skipped.
    pub fn parse(text: &str) -> Services {
        let mut ports = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((port, proto)) = port_proto.split_once('/') else {
                continue;
            };
            if proto != "tcp" {
                continue;
            }
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            if port == 0 {
                continue;
            }
            for alias in std::iter::once(name).chain(fields) {
                ports.entry(alias.to_string()).or_insert(port);
            }
        }
        Services {
            ports,
            available: true,
        }
    }

    /// Reads and parses `path`. A missing or unreadable file gives an empty database
    /// that knows it is missing: then only numeric ports work.
    pub fn load(path: &Path) -> Services {
        match std::fs::read_to_string(path) {
            Ok(text) => Services::parse(&text),
            Err(error) => {
                log::debug!("no services database at {}: {error}", path.display());
                Services::default()
            }
        }
    }

    /// The TCP port of a service name or alias.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.get(name).copied()
    }

    /// Whether a database was read at all.
    pub fn available(&self) -> bool {
        self.available
    }
}

/// The services database, read on first use only.
#[derive(Debug)]
pub struct ServiceDb {
    path: PathBuf,
    loaded: OnceCell<Services>,
}

impl ServiceDb {
    /// A database that will be read from `path` when a name is first looked up.
    pub fn at(path: impl Into<PathBuf>) -> ServiceDb {
        ServiceDb {
            path: path.into(),
            loaded: OnceCell::new(),
        }
    }

    /// A database that is already in memory (for tests, and for callers that parsed
    /// their own).
    pub fn preloaded(services: Services) -> ServiceDb {
        ServiceDb {
            path: PathBuf::from(SERVICES_PATH),
            loaded: OnceCell::from(services),
        }
    }

    /// The parsed database, read now if this is the first use.
    pub fn get(&self) -> &Services {
        self.loaded.get_or_init(|| Services::load(&self.path))
    }

    /// Where the database is read from, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# Network services, Internet style
tcpmux		1/tcp				# TCP port service multiplexer
ssh		22/tcp				# SSH Remote Login Protocol
fsp		21/udp		fspd
smtp		25/tcp		mail
http		80/tcp		www		# WorldWideWeb HTTP
https		443/tcp
https		443/udp
kerberos-adm	749/tcp
broken		notaport/tcp
alsobroken	99
zero		0/tcp
http-alt	8080/tcp	webcache
";

    #[test]
    fn tcp_names_and_aliases_map_to_their_ports() {
        let services = Services::parse(SAMPLE);
        assert!(services.available());
        assert_eq!(services.port("ssh"), Some(22));
        assert_eq!(services.port("https"), Some(443));
        assert_eq!(services.port("www"), Some(80));
        assert_eq!(services.port("mail"), Some(25));
        assert_eq!(services.port("kerberos-adm"), Some(749));
        assert_eq!(services.port("webcache"), Some(8080));
    }

    #[test]
    fn udp_only_comments_malformed_and_zero_entries_are_ignored() {
        let services = Services::parse(SAMPLE);
        assert_eq!(services.port("fsp"), None);
        assert_eq!(services.port("fspd"), None);
        assert_eq!(services.port("TCP"), None);
        assert_eq!(services.port("broken"), None);
        assert_eq!(services.port("alsobroken"), None);
        assert_eq!(services.port("zero"), None);
    }

    #[test]
    fn a_missing_file_gives_an_empty_database_that_says_so() {
        let services = Services::load(Path::new("/nonexistent/twistctl/services"));
        assert!(!services.available());
        assert_eq!(services.port("ssh"), None);
    }

    #[test]
    fn the_lazy_database_reads_its_file_on_first_use() {
        let dir = std::env::temp_dir().join(format!("twistctl-services-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("services");
        std::fs::write(&path, "postgresql 5432/tcp postgres\n").unwrap();
        let db = ServiceDb::at(&path);
        assert_eq!(db.get().port("postgres"), Some(5432));
        // Read once: a later change of the file is not seen.
        std::fs::write(&path, "postgresql 5433/tcp\n").unwrap();
        assert_eq!(db.get().port("postgresql"), Some(5432));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
