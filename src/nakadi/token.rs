//! The bearer token, read from a file and kept in memory.
//!
//! Kubernetes mounts secrets as symlinks into a timestamped directory and rotates them by
//! swapping the symlink, so the path stays the same while the file behind it changes. Before each
//! request the metadata of the resolved file (inode, device, length, modification time) is
//! compared with what was read last: one `stat`, far cheaper than the request it precedes, and it
//! makes a rotated token take effect on the very next request. A 401 forces a re-read too, since
//! a rewrite in place can keep length and a coarse modification time.
//!
//! The token lives only inside a sensitive `HeaderValue` wrapped in [`Authorization`], whose
//! `Debug` prints `<redacted>`; errors and logs name the file, never its content.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use reqwest::header::HeaderValue;
use tracing::{info, warn};

use super::{NakadiError, TokenSource};

/// The `Authorization` header value, e.g. `Bearer <token>`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Authorization(HeaderValue);

impl Authorization {
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the token and its type are read from.
#[derive(Debug, Clone)]
struct TokenFiles {
    secret: PathBuf,
    /// `None` for a plain token file, whose type is always `Bearer`.
    kind: Option<PathBuf>,
}

/// What a file looked like when it was read; any difference means it was replaced or rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
}

impl FileStamp {
    fn of(path: &Path) -> io::Result<FileStamp> {
        // `metadata` follows symlinks: after a Kubernetes symlink swap the inode changes even when
        // the length and the modification time happen to be the same.
        let m = fs::metadata(path)?;
        #[cfg(unix)]
        let (inode, device) = {
            use std::os::unix::fs::MetadataExt;
            (m.ino(), m.dev())
        };
        #[cfg(not(unix))]
        let (inode, device) = (0, 0);
        Ok(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode,
            device,
        })
    }
}

/// Stamps of the secret file and of the (optional) type file.
type Stamps = (FileStamp, Option<FileStamp>);

struct Cached {
    authorization: Authorization,
    stamps: Stamps,
}

/// Hands out the current `Authorization` header; shared by every request of a publisher.
pub(crate) struct TokenProvider {
    files: Option<TokenFiles>,
    /// A std mutex: held only to compare and swap, never across an await.
    cached: Mutex<Option<Cached>>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("files", &self.files)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl TokenProvider {
    /// Reads the token now, so that a missing or unreadable file stops the start with an error
    /// naming the path.
    pub(crate) fn new(source: &TokenSource) -> Result<TokenProvider, NakadiError> {
        let files = match source {
            TokenSource::None => None,
            TokenSource::File(path) => Some(TokenFiles {
                secret: path.clone(),
                kind: None,
            }),
            TokenSource::CredentialsDir { dir, name } => Some(TokenFiles {
                secret: dir.join(format!("{name}-token-secret")),
                kind: Some(dir.join(format!("{name}-token-type"))),
            }),
        };
        let cached = match &files {
            None => None,
            Some(files) => Some(read(files)?),
        };
        Ok(TokenProvider {
            files,
            cached: Mutex::new(cached),
        })
    }

    /// The header for the next request, re-read first when the file changed. `None` without a
    /// token source.
    pub(crate) fn current(&self) -> Option<Authorization> {
        let files = self.files.as_ref()?;
        let mut cached = self.cached.lock().expect("token lock is never poisoned");
        let changed = match stamps(files) {
            Ok(now) => cached.as_ref().is_none_or(|c| c.stamps != now),
            // A file that is gone for a moment (mid-swap) or unreadable: keep what works and let a
            // 401 tell whether the cached token is still good.
            Err(e) => {
                warn!(path = %files.secret.display(), error = %e, "cannot check the Nakadi token file; keeping the cached token");
                false
            }
        };
        if changed {
            refresh(files, &mut cached, "the token file changed");
        }
        cached.as_ref().map(|c| c.authorization.clone())
    }

    /// After a 401: read the file again even if its metadata looks unchanged.
    pub(crate) fn reload(&self) {
        let Some(files) = self.files.as_ref() else {
            return;
        };
        let mut cached = self.cached.lock().expect("token lock is never poisoned");
        refresh(files, &mut cached, "Nakadi answered 401");
    }
}

fn refresh(files: &TokenFiles, cached: &mut Option<Cached>, why: &str) {
    match read(files) {
        Ok(fresh) => {
            let rotated = cached
                .as_ref()
                .is_none_or(|c| c.authorization != fresh.authorization);
            if rotated {
                info!(path = %files.secret.display(), why, "read a new Nakadi token");
            }
            *cached = Some(fresh);
        }
        Err(e) => {
            warn!(error = %e, why, "re-reading the Nakadi token failed; keeping the cached token");
        }
    }
}

fn stamps(files: &TokenFiles) -> io::Result<Stamps> {
    let secret = FileStamp::of(&files.secret)?;
    let kind = match &files.kind {
        None => None,
        Some(path) => match FileStamp::of(path) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        },
    };
    Ok((secret, kind))
}

fn read(files: &TokenFiles) -> Result<Cached, NakadiError> {
    let unreadable = |path: &Path| {
        let path = path.to_owned();
        move |source| NakadiError::TokenUnreadable { path, source }
    };
    // Stamped before reading: a change that lands between the two is seen at the next check.
    let stamps = stamps(files).map_err(unreadable(&files.secret))?;
    let token = fs::read_to_string(&files.secret).map_err(unreadable(&files.secret))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(NakadiError::TokenEmpty {
            path: files.secret.clone(),
        });
    }
    let kind = match &files.kind {
        None => "Bearer".to_owned(),
        Some(path) => match fs::read_to_string(path) {
            Ok(kind) if !kind.trim().is_empty() => kind.trim().to_owned(),
            Ok(_) => "Bearer".to_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => "Bearer".to_owned(),
            Err(e) => return Err(unreadable(path)(e)),
        },
    };
    let mut header = HeaderValue::from_str(&format!("{kind} {token}")).map_err(|_| {
        NakadiError::TokenInvalid {
            path: files.secret.clone(),
        }
    })?;
    // Keeps the value out of hyper's and reqwest's own `Debug` output and lets HTTP/2 never
    // index it in HPACK tables.
    header.set_sensitive(true);
    Ok(Cached {
        authorization: Authorization(header),
        stamps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(p: &TokenProvider) -> String {
        p.current()
            .map(|a| a.header().to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// Replaces the file the way Kubernetes does: a new file, then an atomic rename over the old
    /// one, so the inode changes.
    fn replace(path: &Path, content: &str) {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, content).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn no_source_means_no_header() {
        let p = TokenProvider::new(&TokenSource::None).unwrap();
        assert!(p.current().is_none());
    }

    #[test]
    fn file_token_is_trimmed_and_bearer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "  abc.def \n").unwrap();
        let p = TokenProvider::new(&TokenSource::File(path)).unwrap();
        assert_eq!(value(&p), "Bearer abc.def");
    }

    #[test]
    fn credentials_dir_reads_secret_and_type() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("nakadi-token-secret"), "s3cr3t\n").unwrap();
        let source = TokenSource::CredentialsDir {
            dir: dir.path().to_owned(),
            name: "nakadi".into(),
        };
        let p = TokenProvider::new(&source).unwrap();
        assert_eq!(value(&p), "Bearer s3cr3t", "type defaults to Bearer");

        fs::write(dir.path().join("nakadi-token-type"), "Token\n").unwrap();
        assert_eq!(
            value(&p),
            "Token s3cr3t",
            "a type file appearing is a change"
        );
    }

    #[test]
    fn missing_file_at_start_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let err = TokenProvider::new(&TokenSource::File(path.clone())).unwrap_err();
        assert!(matches!(err, NakadiError::TokenUnreadable { .. }));
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );

        let source = TokenSource::CredentialsDir {
            dir: dir.path().to_owned(),
            name: "nakadi".into(),
        };
        let err = TokenProvider::new(&source).unwrap_err();
        assert!(err.to_string().contains("nakadi-token-secret"), "{err}");
    }

    #[test]
    fn empty_or_invalid_token_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, " \n").unwrap();
        let err = TokenProvider::new(&TokenSource::File(path.clone())).unwrap_err();
        assert!(matches!(err, NakadiError::TokenEmpty { .. }), "{err}");

        fs::write(&path, "secret-part\nsecond-line").unwrap();
        let err = TokenProvider::new(&TokenSource::File(path)).unwrap_err();
        assert!(matches!(err, NakadiError::TokenInvalid { .. }), "{err}");
        assert!(!err.to_string().contains("secret-part"));
        assert!(!format!("{err:?}").contains("secret-part"));
    }

    #[test]
    fn replaced_file_is_read_on_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "old").unwrap();
        let p = TokenProvider::new(&TokenSource::File(path.clone())).unwrap();
        assert_eq!(value(&p), "Bearer old");
        // Same length: only the inode tells the files apart.
        replace(&path, "new");
        assert_eq!(value(&p), "Bearer new");
    }

    #[cfg(unix)]
    #[test]
    fn kubernetes_symlink_swap_is_followed() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("..2024_01")).unwrap();
        fs::write(d.join("..2024_01/nakadi-token-secret"), "first").unwrap();
        symlink("..2024_01", d.join("..data")).unwrap();
        symlink("..data/nakadi-token-secret", d.join("nakadi-token-secret")).unwrap();
        let source = TokenSource::CredentialsDir {
            dir: d.to_owned(),
            name: "nakadi".into(),
        };
        let p = TokenProvider::new(&source).unwrap();
        assert_eq!(value(&p), "Bearer first");

        fs::create_dir(d.join("..2024_02")).unwrap();
        fs::write(d.join("..2024_02/nakadi-token-secret"), "secnd").unwrap();
        symlink("..2024_02", d.join("..data_tmp")).unwrap();
        fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        fs::remove_dir_all(d.join("..2024_01")).unwrap();
        assert_eq!(value(&p), "Bearer secnd");
    }

    #[test]
    fn unreadable_file_at_runtime_keeps_the_cached_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "kept").unwrap();
        let p = TokenProvider::new(&TokenSource::File(path.clone())).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(value(&p), "Bearer kept");
        p.reload();
        assert_eq!(value(&p), "Bearer kept");
        // An empty file mid-rotation is no token either.
        fs::write(&path, "").unwrap();
        assert_eq!(value(&p), "Bearer kept");
        fs::write(&path, "later").unwrap();
        assert_eq!(value(&p), "Bearer later");
    }

    #[test]
    fn reload_reads_a_rewrite_the_metadata_misses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "aaaa").unwrap();
        let p = TokenProvider::new(&TokenSource::File(path.clone())).unwrap();
        let before = FileStamp::of(&path).unwrap();
        fs::write(&path, "bbbb").unwrap();
        // Force the stamp back so only a forced re-read can notice the new content.
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(before.modified.unwrap()).unwrap();
        drop(file);
        assert_eq!(value(&p), "Bearer aaaa");
        p.reload();
        assert_eq!(value(&p), "Bearer bbbb");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "hush-hush-token").unwrap();
        let p = TokenProvider::new(&TokenSource::File(path)).unwrap();
        let auth = p.current().unwrap();
        for shown in [
            format!("{p:?}"),
            format!("{auth:?}"),
            format!("{:?}", auth.header()),
        ] {
            assert!(!shown.contains("hush-hush"), "{shown}");
        }
    }
}
