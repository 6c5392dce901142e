//! Path parsing: absolute, `/`-separated, no `.` or `..`.

use crate::error::FsError;
use crate::metadata::{State, ROOT};
use crate::record::{Ino, Kind};

/// Longest name of one directory entry, in bytes.
pub const NAME_MAX: usize = 255;

/// Splits an absolute path into its names.
///
/// # Errors
/// [`FsError::InvalidArgument`] for relative paths, `.`/`..` or NUL;
/// [`FsError::NameTooLong`].
pub(crate) fn components(path: &str) -> Result<Vec<&str>, FsError> {
    if !path.starts_with('/') {
        return Err(FsError::InvalidArgument {
            what: format!("{path:?} is not an absolute path"),
        });
    }
    let mut out = Vec::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." || c.contains('\0') {
            return Err(FsError::InvalidArgument {
                what: format!("{path:?}: '.', '..' and NUL are not supported"),
            });
        }
        if c.len() > NAME_MAX {
            return Err(FsError::NameTooLong {
                path: path.to_string(),
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// Walks `comps` from the root.
pub(crate) fn resolve(st: &State, path: &str, comps: &[&str]) -> Result<Ino, FsError> {
    let mut at = ROOT;
    for c in comps {
        let dir = st.inodes.get(&at).ok_or_else(|| FsError::NotFound {
            path: path.to_string(),
        })?;
        if dir.kind != Kind::Dir {
            return Err(FsError::NotDir {
                path: path.to_string(),
            });
        }
        at = *dir.entries.get(*c).ok_or_else(|| FsError::NotFound {
            path: path.to_string(),
        })?;
    }
    Ok(at)
}

/// The directory that holds the last name of `path`, and that name.
pub(crate) fn resolve_parent<'p>(st: &State, path: &'p str) -> Result<(Ino, &'p str), FsError> {
    let comps = components(path)?;
    let Some((name, dirs)) = comps.split_last() else {
        return Err(FsError::InvalidArgument {
            what: "the root directory cannot be changed".into(),
        });
    };
    let parent = resolve(st, path, dirs)?;
    match st.inodes.get(&parent) {
        Some(i) if i.kind == Kind::Dir => Ok((parent, name)),
        _ => Err(FsError::NotDir {
            path: path.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(components("/a//b/").unwrap(), vec!["a", "b"]);
        assert!(components("/").unwrap().is_empty());
        assert!(matches!(
            components("a/b"),
            Err(FsError::InvalidArgument { .. })
        ));
        assert!(matches!(
            components("/a/../b"),
            Err(FsError::InvalidArgument { .. })
        ));
        let long = format!("/{}", "x".repeat(256));
        assert!(matches!(
            components(&long),
            Err(FsError::NameTooLong { .. })
        ));
    }
}
