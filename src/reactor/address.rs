//! The address of either end of a connection: an IP socket address, or a UNIX domain
//! socket address (Twisted's `IPv4Address`/`IPv6Address` and `UNIXAddress`, X-15, U-06).
//!
//! Displayed the way command lines write them: `127.0.0.1:80`, `[::1]:80`,
//! `unix:/run/app.sock`, `unix:@name` (a Linux abstract name, U-04), and `unix:` for an
//! unnamed socket (a client that did not bind).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where a connection, port or connector is: TCP or UNIX.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IPv4 or IPv6 address and port.
    Tcp(SocketAddr),
    /// A UNIX domain socket address.
    Unix(UnixAddress),
}

/// The address of a UNIX domain socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixAddress {
    /// A socket file in the file system.
    Path(PathBuf),
    /// A Linux abstract name: the bytes after the leading NUL, with no file behind them
    /// (U-04).
    Abstract(Box<[u8]>),
    /// A socket bound to no name: the usual client side (U-06).
    Unnamed,
}

impl Address {
    /// The IP socket address, for a TCP address.
    pub fn as_inet(&self) -> Option<SocketAddr> {
        match self {
            Address::Tcp(address) => Some(*address),
            Address::Unix(_) => None,
        }
    }

    /// The UNIX address, for a UNIX address.
    pub fn as_unix(&self) -> Option<&UnixAddress> {
        match self {
            Address::Tcp(_) => None,
            Address::Unix(address) => Some(address),
        }
    }

    /// True for a UNIX domain socket address.
    pub fn is_unix(&self) -> bool {
        matches!(self, Address::Unix(_))
    }
}

impl Address {
    /// The address a system call gave: IP, a UNIX path or abstract name, or unnamed.
    pub(crate) fn from_sockaddr(address: &socket2::SockAddr) -> Address {
        if let Some(inet) = address.as_socket() {
            return Address::Tcp(inet);
        }
        if let Some(path) = address.as_pathname() {
            return Address::Unix(UnixAddress::Path(path.to_path_buf()));
        }
        match address.as_abstract_namespace() {
            Some(name) => Address::Unix(UnixAddress::Abstract(name.into())),
            None => Address::Unix(UnixAddress::Unnamed),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(address: SocketAddr) -> Address {
        Address::Tcp(address)
    }
}

impl From<UnixAddress> for Address {
    fn from(address: UnixAddress) -> Address {
        Address::Unix(address)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(address) => address.fmt(f),
            Address::Unix(address) => address.fmt(f),
        }
    }
}

impl UnixAddress {
    /// The address a command line means by `text`: `@name` is the abstract name `name`
    /// (U-04), anything else a path. The `unix:` prefix, if any, is the caller's to strip.
    pub fn from_arg(text: &str) -> UnixAddress {
        match text.strip_prefix('@') {
            Some(name) => UnixAddress::Abstract(name.as_bytes().into()),
            None => UnixAddress::Path(PathBuf::from(text)),
        }
    }

    /// The socket address to bind or connect to; an unnamed address has none.
    pub(crate) fn to_sockaddr(&self) -> std::io::Result<socket2::SockAddr> {
        match self {
            UnixAddress::Path(path) => socket2::SockAddr::unix(path),
            UnixAddress::Abstract(name) => {
                // The kernel's form of an abstract name: a NUL, then the name.
                use std::os::unix::ffi::OsStrExt;
                let mut bytes = Vec::with_capacity(name.len() + 1);
                bytes.push(0);
                bytes.extend_from_slice(name);
                socket2::SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))
            }
            UnixAddress::Unnamed => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an unnamed UNIX socket address cannot be bound or connected to",
            )),
        }
    }

    /// The file system path, for a path address.
    pub fn path(&self) -> Option<&Path> {
        match self {
            UnixAddress::Path(path) => Some(path),
            _ => None,
        }
    }

    /// The name without its leading NUL, for an abstract address.
    pub fn abstract_name(&self) -> Option<&[u8]> {
        match self {
            UnixAddress::Abstract(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for UnixAddress {
    /// `unix:PATH`, `unix:@NAME` or `unix:`. Control characters are escaped: a peer
    /// chooses its own name, and the name may be printed on a terminal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unix:")?;
        let text = match self {
            UnixAddress::Path(path) => path.to_string_lossy(),
            UnixAddress::Abstract(name) => {
                f.write_str("@")?;
                String::from_utf8_lossy(name)
            }
            UnixAddress::Unnamed => return Ok(()),
        };
        for c in text.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_display_as_command_lines_write_them() {
        let v4 = Address::from(SocketAddr::from(([127, 0, 0, 1], 80)));
        let v6: Address = "[::1]:80".parse::<SocketAddr>().unwrap().into();
        let path = Address::from(UnixAddress::from_arg("/run/app.sock"));
        let named = Address::from(UnixAddress::from_arg("@talk"));
        let unnamed = Address::Unix(UnixAddress::Unnamed);
        assert_eq!(v4.to_string(), "127.0.0.1:80");
        assert_eq!(v6.to_string(), "[::1]:80");
        assert_eq!(path.to_string(), "unix:/run/app.sock");
        assert_eq!(named.to_string(), "unix:@talk");
        assert_eq!(unnamed.to_string(), "unix:");
    }

    #[test]
    fn control_characters_in_names_are_escaped() {
        let hostile = UnixAddress::Abstract(b"x\x1b[2Jy\0z".as_slice().into());
        assert_eq!(hostile.to_string(), "unix:@x\\u{1b}[2Jy\\0z");
        let path = UnixAddress::Path(PathBuf::from("/tmp/a\nb"));
        assert_eq!(path.to_string(), "unix:/tmp/a\\nb");
    }

    #[test]
    fn as_inet_and_as_unix_tell_the_kinds_apart() {
        let tcp = Address::from(SocketAddr::from(([10, 0, 0, 1], 22)));
        assert_eq!(tcp.as_inet(), Some(SocketAddr::from(([10, 0, 0, 1], 22))));
        assert!(tcp.as_unix().is_none() && !tcp.is_unix());
        let unix = Address::from(UnixAddress::from_arg("@n"));
        assert!(unix.as_inet().is_none() && unix.is_unix());
        assert_eq!(
            unix.as_unix().and_then(UnixAddress::abstract_name),
            Some(&b"n"[..])
        );
        assert_eq!(
            UnixAddress::from_arg("rel/sock").path(),
            Some(Path::new("rel/sock"))
        );
    }
}
