//! A node's long-term identity and its files.
//!
//! A node is named forever by its [`NodeId`] and authenticated by a static X25519 key pair. Both
//! live in the data directory and are created on first start:
//!
//! ```text
//! <dir>/            mode 0700 when we create it
//! <dir>/node_id     mode 0600, the node id as hyphenated UUID text + "\n"
//! <dir>/node.key    mode 0600, the 32-byte X25519 secret as 64 lowercase hex chars + "\n"
//! ```
//!
//! Invariants:
//! - Either both files exist or neither does; one without the other is refused (a node id
//!   without its key, or a key without its id, is not an identity, and silently inventing the
//!   missing half would make the CMA see a stranger or a key change).
//! - Files are written atomically (temporary file, fsync, rename, fsync of the directory), so a
//!   crash leaves either no file or a complete one.
//! - A file that group or others may read or write is refused: the key is the node's
//!   credential, and the id must not be replaceable by another user.
//!
//! The public key is published as a [`fingerprint`] (`SHA256:` + 32 hex chars) for operators to
//! compare out of band.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use assim_wire::NodeId;
use rand::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

/// File name of the node id inside the data directory.
pub const NODE_ID_FILE: &str = "node_id";
/// File name of the secret key inside the data directory.
pub const KEY_FILE: &str = "node.key";

/// A node's identity: its id and static X25519 key pair.
#[derive(Clone)]
pub struct Identity {
    node_id: NodeId,
    secret: StaticSecret,
    public: [u8; 32],
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Why the identity files could not be loaded or created. Nothing on disk was changed unless the
/// variant says so.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A filesystem operation failed (the message names the operation and the path). Files
    /// written before the failure may remain; they are complete if present.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file is readable or writable by group or others. Nothing was changed.
    #[error(
        "{path} has mode {mode:04o}, which lets group or others read or write it; \
         run `chmod 600 {path}` (and check nobody copied it) before starting again"
    )]
    Permissions { path: PathBuf, mode: u32 },
    /// A file exists but its content is not valid. Nothing was changed.
    #[error(
        "{path} is corrupt ({reason}); restore it from a backup, or remove both {NODE_ID_FILE} \
         and {KEY_FILE} in that directory to start as a new node (the CMA will see a new node)"
    )]
    Corrupt { path: PathBuf, reason: String },
    /// The session file exists but does not hold a session number. Nothing was changed.
    #[error(
        "{path} is corrupt ({reason}); it holds the last session number, so peers accept this \
         run's messages: remove it to start with a fresh clock-based session (peers that saw a \
         later session from this node will ignore it until its clock passes that one)"
    )]
    CorruptSession { path: PathBuf, reason: String },
    /// Only one of the two files exists. Nothing was changed.
    #[error(
        "{present} exists but {missing} does not; restore {missing} from a backup, or remove \
         {present} to start as a new node (the CMA will see a new node)"
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
}

impl Identity {
    /// Loads `dir/node_id` (UUID text) and `dir/node.key` (the 32-byte X25519 secret, stored as
    /// 64 hex chars + newline), creating both on first start: the directory with mode 0700 if
    /// missing, the files with mode 0600, atomically (write a temporary file, fsync, rename).
    ///
    /// Refuses with [`IdentityError`] if a file is readable or writable by group or others, is
    /// corrupt (bad hex, wrong length, bad UUID), or only one of the two files exists.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        create_private_dir(dir)?;
        let id_path = dir.join(NODE_ID_FILE);
        let key_path = dir.join(KEY_FILE);
        let id_text = read_private(&id_path)?;
        let key_text = read_private(&key_path)?;
        match (id_text, key_text) {
            (Some(id_text), Some(key_text)) => {
                let node_id = parse_node_id(&id_path, &id_text)?;
                let secret = parse_key(&key_path, &key_text)?;
                Ok(Identity::from_parts(node_id, secret))
            }
            (None, None) => {
                let identity = Identity::generate(&mut rand::rngs::OsRng);
                // The key first: a crash between the two writes leaves a key without an id,
                // which is refused with a clear message rather than silently replaced.
                let key_hex = format!("{}\n", hex::encode(identity.secret.as_bytes()));
                write_atomic(dir, KEY_FILE, key_hex.as_bytes())?;
                write_atomic(dir, NODE_ID_FILE, format!("{}\n", identity.node_id).as_bytes())?;
                Ok(identity)
            }
            (Some(_), None) => {
                Err(IdentityError::Incomplete { present: id_path, missing: key_path })
            }
            (None, Some(_)) => {
                Err(IdentityError::Incomplete { present: key_path, missing: id_path })
            }
        }
    }

    /// A fresh identity: a UUIDv7 node id and a random key from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Identity {
        let secret = StaticSecret::random_from_rng(rng);
        Identity::from_secret(NodeId::new_v7(), secret)
    }

    /// An identity from known parts (tests and the simulator, where everything is seeded).
    pub fn from_parts(node_id: NodeId, secret: [u8; 32]) -> Identity {
        Identity::from_secret(node_id, StaticSecret::from(secret))
    }

    fn from_secret(node_id: NodeId, secret: StaticSecret) -> Identity {
        let public = PublicKey::from(&secret).to_bytes();
        Identity { node_id, secret, public }
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The X25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The public key's fingerprint, for operators to compare out of band.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public)
    }

    /// The secret key (crate-internal: sealing and tests only).
    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

/// `"SHA256:"` + lowercase hex of the first 16 bytes of SHA-256 of the public key.
pub fn fingerprint(public_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(public_key);
    format!("SHA256:{}", hex::encode(&digest[..16]))
}

/// Builds a session number: `(unix_millis << 16) | random16`. A restart gets a larger session as
/// long as the wall clock moved forward by at least a millisecond; peers refuse datagrams from
/// sessions older than the newest they have seen (`stale_session`).
pub fn new_session(unix_millis: u64, random16: u16) -> u64 {
    (unix_millis << 16) | u64::from(random16)
}

/// Picks this run's session number and records it in `data_dir/session`.
///
/// Peers accept only sessions larger than the last one they saw from us, so a restart must never
/// go backwards, even when the wall clock did: the new session is the larger of a fresh
/// clock-based one ([`new_session`]) and the previous run's plus one. The file is written
/// atomically with mode 0600 and made durable (file and directory fsync'd) before the session is
/// used; a file that does not hold a number is an error ([`IdentityError::CorruptSession`]),
/// not silently replaced, since a replacement could go backwards.
pub fn next_session(data_dir: &Path) -> Result<u64, IdentityError> {
    let path = data_dir.join(SESSION_FILE);
    let previous = match fs::read_to_string(&path) {
        Ok(s) => Some(s.trim().parse::<u64>().map_err(|e| IdentityError::CorruptSession {
            path: path.clone(),
            reason: format!("{:?} is not a session number: {e}", clip(s.trim(), 40)),
        })?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(IdentityError::CorruptSession { path, reason: "not UTF-8 text".into() });
        }
        Err(source) => return Err(IdentityError::Io { action: "read", path, source }),
    };
    let fresh = new_session(assim_wire::Timestamp::now().millis(), rand::random());
    let session = previous.map_or(fresh, |p| fresh.max(p.saturating_add(1)));
    write_atomic(data_dir, SESSION_FILE, format!("{session}\n").as_bytes())?;
    Ok(session)
}

/// The file, in a data directory, that holds the last session number.
pub const SESSION_FILE: &str = "session";

fn clip(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Creates a data directory (and missing parents) with mode 0700, so that nothing in it is
/// readable by other local users; an existing directory is left as it is. Call it before
/// anything else writes into the directory.
pub fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|source| {
        IdentityError::Io { action: "create directory", path: dir.to_owned(), source }
    })
}

/// Largest identity file we read: the key file is 65 bytes; anything much larger is corrupt and is
/// refused before it is read into memory.
const MAX_FILE_LEN: u64 = 256;

/// Reads a small private file; `None` if it does not exist. Refuses group/other permissions.
fn read_private(path: &Path) -> Result<Option<String>, IdentityError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IdentityError::Io { action: "inspect", path: path.to_owned(), source });
        }
    };
    if !meta.is_file() {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions { path: path.to_owned(), mode });
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
            reason: format!("{} bytes long, expected at most {MAX_FILE_LEN}", meta.len()),
        });
    }
    let bytes = fs::read(path).map_err(|source| IdentityError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map(Some).map_err(|_| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: "not UTF-8 text".into(),
    })
}

fn parse_node_id(path: &Path, text: &str) -> Result<NodeId, IdentityError> {
    text.trim().parse::<NodeId>().map_err(|e| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: format!("not a UUID: {e}"),
    })
}

fn parse_key(path: &Path, text: &str) -> Result<[u8; 32], IdentityError> {
    let hex_text = text.trim();
    if hex_text.len() != 64 {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
            reason: format!("{} characters of key, expected 64 hex characters", hex_text.len()),
        });
    }
    let mut secret = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut secret).map_err(|e| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: format!("bad hex: {e}"),
    })?;
    Ok(secret)
}

/// Writes `dir/name` atomically with mode 0600: temporary file, fsync, rename, fsync directory.
fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<(), IdentityError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io { action, path, source }
    };
    // A leftover from a crash during an earlier first start: it was never renamed into place.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("remove stale temporary file", &tmp)(e));
        }
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all(contents).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Issue 16 item 16: the session file is private and durable, and a corrupt one is an error
    /// that names the file and the way out (it was silently replaced by a fresh session).
    #[test]
    fn item16_corrupt_session_file_is_an_error_naming_the_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("assim-session-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        super::next_session(&dir).unwrap();
        let path = dir.join(super::SESSION_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.join(".session.tmp").exists());
        std::fs::write(&path, "17\u{0}garbage\n").unwrap();
        let e = super::next_session(&dir).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains("remove it"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "17\u{0}garbage\n", "left alone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sessions_never_go_backwards() {
        let dir = std::env::temp_dir().join(format!("assim-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = super::next_session(&dir).unwrap();
        // A previous run from "the future" (clock stepped back since).
        std::fs::write(dir.join("session"), format!("{}\n", a + 1_000_000_000)).unwrap();
        let b = super::next_session(&dir).unwrap();
        assert_eq!(b, a + 1_000_000_001);
        assert!(super::next_session(&dir).unwrap() > b);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;
    use rand::SeedableRng as _;

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let mut rng = rand::thread_rng();
            let path = std::env::temp_dir().join(format!(
                "assim-seal-{tag}-{}-{:016x}",
                std::process::id(),
                rng.next_u64()
            ));
            fs::create_dir(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_files_private_and_reloads_the_same_identity() {
        let tmp = TempDir::new("create");
        let dir = tmp.0.join("state").join("assim");
        let first = Identity::load_or_create(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(NODE_ID_FILE)), 0o600);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        let key_text = fs::read_to_string(dir.join(KEY_FILE)).unwrap();
        assert_eq!(key_text.len(), 65);
        assert!(key_text.ends_with('\n'));
        assert!(!dir.join(format!(".{KEY_FILE}.tmp")).exists());

        let second = Identity::load_or_create(&dir).unwrap();
        assert_eq!(second.node_id(), first.node_id());
        assert_eq!(second.public_key(), first.public_key());
        assert_eq!(
            fs::read_to_string(dir.join(NODE_ID_FILE)).unwrap().trim(),
            first.node_id().to_string()
        );
    }

    #[test]
    fn refuses_group_readable_key_file() {
        let tmp = TempDir::new("perm");
        Identity::load_or_create(&tmp.0).unwrap();
        let key = tmp.0.join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let err = Identity::load_or_create(&tmp.0).unwrap_err();
        assert!(matches!(err, IdentityError::Permissions { mode: 0o640, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&key.display().to_string()), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(msg.contains("0640"), "{msg}");
        // The refusal changed nothing.
        assert_eq!(mode(&key), 0o640);
    }

    #[test]
    fn refuses_world_writable_id_file() {
        let tmp = TempDir::new("perm-id");
        Identity::load_or_create(&tmp.0).unwrap();
        let id = tmp.0.join(NODE_ID_FILE);
        fs::set_permissions(&id, fs::Permissions::from_mode(0o602)).unwrap();
        let err = Identity::load_or_create(&tmp.0).unwrap_err();
        assert!(matches!(err, IdentityError::Permissions { .. }), "{err:?}");
    }

    fn write_private(path: &Path, contents: &str) {
        let _ = fs::remove_file(path);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .unwrap()
            .write_all(contents.as_bytes())
            .unwrap();
    }

    #[test]
    fn refuses_corrupt_key() {
        let cases = [
            ("zz".repeat(32) + "\n", "bad hex"),
            ("ab".repeat(31) + "\n", "62 characters"),
            ("ab".repeat(33) + "\n", "66 characters"),
            (String::new(), "0 characters"),
        ];
        for (contents, expect) in cases {
            let tmp = TempDir::new("corrupt-key");
            Identity::load_or_create(&tmp.0).unwrap();
            let key = tmp.0.join(KEY_FILE);
            write_private(&key, &contents);
            let err = Identity::load_or_create(&tmp.0).unwrap_err();
            assert!(matches!(err, IdentityError::Corrupt { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(expect), "{msg}");
            assert!(msg.contains(&key.display().to_string()), "{msg}");
        }
    }

    #[test]
    fn refuses_corrupt_id() {
        let tmp = TempDir::new("corrupt-id");
        Identity::load_or_create(&tmp.0).unwrap();
        let id = tmp.0.join(NODE_ID_FILE);
        write_private(&id, "not-a-uuid\n");
        let err = Identity::load_or_create(&tmp.0).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("not a UUID"), "{err}");
    }

    #[test]
    fn refuses_only_one_file() {
        for remove in [KEY_FILE, NODE_ID_FILE] {
            let tmp = TempDir::new("incomplete");
            Identity::load_or_create(&tmp.0).unwrap();
            fs::remove_file(tmp.0.join(remove)).unwrap();
            let err = Identity::load_or_create(&tmp.0).unwrap_err();
            assert!(matches!(err, IdentityError::Incomplete { .. }), "{err:?}");
            assert!(err.to_string().contains(remove), "{err}");
            // Nothing was invented in the missing file's place.
            assert!(!tmp.0.join(remove).exists());
        }
    }

    #[test]
    fn from_parts_is_deterministic_and_debug_hides_the_secret() {
        let secret = [0x42; 32];
        let a = Identity::from_parts(NodeId([1; 16]), secret);
        let b = Identity::from_parts(NodeId([1; 16]), secret);
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.fingerprint(), fingerprint(&a.public_key()));
        assert!(a.fingerprint().starts_with("SHA256:"));
        assert_eq!(a.fingerprint().len(), "SHA256:".len() + 32);
        let dbg = format!("{a:?}");
        assert!(!dbg.contains(&hex::encode(secret)), "{dbg}");
        assert!(!dbg.contains("66, 66"), "{dbg}");
        assert!(dbg.contains(&a.fingerprint()), "{dbg}");

        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let g = Identity::generate(&mut rng);
        assert_ne!(g.public_key(), a.public_key());
        assert_eq!(g.clone().public_key(), g.public_key());
    }

    #[test]
    fn sessions_grow_with_time() {
        assert!(new_session(1_700_000_000_001, 0) > new_session(1_700_000_000_000, u16::MAX));
        assert_eq!(new_session(1, 2), 0x1_0002);
    }
}
