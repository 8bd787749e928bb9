//! Errors of the control plane and of posting. Completion statuses are not
//! errors: they are [`crate::WcStatus`] values in a [`crate::Completion`].

use std::fmt;

/// Result of an `rdma` call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A verb (or the loopback provider's model of it) failed with an errno.
    #[error("{verb} failed: {} (errno {errno})", Errno(*errno))]
    Verb {
        /// The rdma-core function, e.g. `ibv_reg_mr`.
        verb: &'static str,
        /// The errno it reported.
        errno: i32,
    },
    /// No RDMA device of that name is present.
    #[error("no RDMA device named {name:?} (present: {present:?})")]
    NoDevice {
        /// The name asked for.
        name: String,
        /// The names present.
        present: Vec<String>,
    },
    /// An argument is out of range (too much private data, too many SGEs, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// Objects of different providers or devices were combined (a verbs PD
    /// with a loopback CM id, a PD of `mlx5_0` with a connection on `rxe0`).
    #[error("objects belong to different providers or devices: {0}")]
    WrongDevice(&'static str),
    /// The call does not fit the CM id's state (connect before resolving the
    /// route, post before a QP exists, ...).
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
    /// The provider does not implement this operation.
    #[error("not supported by the {provider} provider: {what}")]
    Unsupported {
        /// `verbs` or `loopback`.
        provider: &'static str,
        /// The operation.
        what: &'static str,
    },
}

impl Error {
    /// The errno of a [`Error::Verb`] failure.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Verb { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(crate) fn verb(verb: &'static str, errno: i32) -> Self {
        Error::Verb { verb, errno }
    }

    /// A failed verb that reported its error through `errno`.
    pub(crate) fn last_os(verb: &'static str) -> Self {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        Error::Verb { verb, errno }
    }

    /// A failed verb that returned its errno (positive), or -1 with `errno`
    /// set (rdma-core uses both conventions).
    pub(crate) fn from_ret(verb: &'static str, ret: i32) -> Self {
        if ret > 0 {
            Error::Verb { verb, errno: ret }
        } else {
            Self::last_os(verb)
        }
    }
}

/// Displays an errno as its message without the "(os error N)" suffix.
struct Errno(i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = std::io::Error::from_raw_os_error(self.0).to_string();
        let s = match s.rfind(" (os error") {
            Some(i) => &s[..i],
            None => &s,
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verb_error_display() {
        let e = Error::verb("ibv_reg_mr", libc::ENOMEM);
        assert_eq!(
            e.to_string(),
            "ibv_reg_mr failed: Cannot allocate memory (errno 12)"
        );
        assert_eq!(e.errno(), Some(12));
    }
}
