//! talk-server's own TLS certificate: a self-signed ECDSA P-256 certificate made on
//! first use and kept in a folder (the state dir by default), so that its fingerprint
//! (what clients pin or remember) stays the same across restarts. The key is written
//! readable by its owner only.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::reactor::tls::ServerIdentity;

/// The certificate's file name in the folder.
pub const CERT_FILE: &str = "talk-server.crt";
/// The key's file name in the folder (mode 0600).
pub const KEY_FILE: &str = "talk-server.key";

/// The names the generated certificate is valid for: the loopback ones, so that a
/// client verifying by name on this machine can also use `--ca` with it.
fn names() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|name| name.to_string())
        .collect()
}

/// The certificate kept in `dir`, made (with the folder, mode 0700) when absent.
pub fn load_or_generate(dir: &Path) -> Result<ServerIdentity, String> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if cert.exists() || key.exists() {
        return ServerIdentity::from_pem_files(&cert, &key).map_err(|error| {
            format!(
                "cannot use the kept certificate in {}: {error} (remove {} and {} to make a new one)",
                dir.display(),
                cert.display(),
                key.display()
            )
        });
    }
    let (identity, pem) = ServerIdentity::generate(&names()).map_err(|e| e.to_string())?;
    let write = || -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // The key first, created with its mode: it is never readable by others, not
        // even for a moment.
        write_new(&key, pem.key_pem.as_bytes(), 0o600)?;
        write_new(&cert, pem.cert_pem.as_bytes(), 0o644)
    };
    write().map_err(|error| {
        format!(
            "cannot keep the generated certificate in {}: {}",
            dir.display(),
            crate::commands::scaffold::os_words(&error)
        )
    })?;
    Ok(identity)
}

fn write_new(path: &PathBuf, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("twistctl-cert-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_generated_certificate_is_kept_and_its_key_is_private() {
        let dir = temp_dir("kept");
        let first = load_or_generate(&dir).unwrap();
        let second = load_or_generate(&dir).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_kept_certificate_is_named_not_replaced() {
        let dir = temp_dir("damaged");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(CERT_FILE), "not a certificate").unwrap();
        let error = load_or_generate(&dir).unwrap_err();
        assert!(error.contains(CERT_FILE), "{error}");
        assert_eq!(
            fs::read_to_string(dir.join(CERT_FILE)).unwrap(),
            "not a certificate"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
