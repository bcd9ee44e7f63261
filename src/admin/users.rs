//! Admin users: `<data_dir>/admin-users.json`, a small file of argon2id password hashes
//! (mode 0600). A file rather than the database so `surepush admin add-user` works while
//! the server runs (the server holds sled's lock); the server re-reads it when it changes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

pub const USERS_FILE: &str = "admin-users.json";
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";
pub const MIN_PASSWORD_LEN: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid admin users file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("user name {0:?} is not valid: use 1-64 letters, digits, '.', '_', '-' or '@'")]
    BadName(String),
    #[error("the password is too short: at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("admin user {0:?} already exists")]
    Exists(String),
    #[error("no admin user {0:?}")]
    NoSuchUser(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdminUser {
    pub name: String,
    /// argon2id PHC string.
    pub hash: String,
    pub created_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    pub users: Vec<AdminUser>,
}

pub fn users_path(data_dir: &Path) -> PathBuf {
    data_dir.join(USERS_FILE)
}

pub fn validate_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(UserError::BadName(name.to_string()))
    }
}

pub fn hash_password(password: &str) -> Result<String, UserError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(UserError::WeakPassword);
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

fn verify_hash(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A random password for a first admin: 20 characters from an unambiguous alphabet.
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..20)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl UsersFile {
    /// The file's users; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<UsersFile, UserError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| UserError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            Err(source) => Err(UserError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes atomically (temp file, fsync, rename) with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), UserError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| UserError::Write {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut text =
            serde_json::to_vec_pretty(self).map_err(|e| UserError::Hash(e.to_string()))?;
        text.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&text).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    pub fn find(&self, name: &str) -> Option<&AdminUser> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn add(&mut self, name: &str, password: &str) -> Result<(), UserError> {
        validate_name(name)?;
        if self.find(name).is_some() {
            return Err(UserError::Exists(name.to_string()));
        }
        let hash = hash_password(password)?;
        self.users.push(AdminUser {
            name: name.to_string(),
            hash,
            created_ms: crate::store::now_ms(),
        });
        Ok(())
    }

    pub fn set_password(&mut self, name: &str, password: &str) -> Result<(), UserError> {
        let hash = hash_password(password)?;
        let user = self
            .users
            .iter_mut()
            .find(|u| u.name == name)
            .ok_or_else(|| UserError::NoSuchUser(name.to_string()))?;
        user.hash = hash;
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Result<(), UserError> {
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        if self.users.len() == before {
            return Err(UserError::NoSuchUser(name.to_string()));
        }
        Ok(())
    }

    /// Checks a password. An unknown user costs the same hash work as a known one, so
    /// timing does not tell which names exist.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        match self.find(name) {
            Some(u) => verify_hash(&u.hash, password),
            None => {
                verify_hash(dummy_hash(), password);
                false
            }
        }
    }
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"surepush-no-such-user")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Creates a first admin user `admin` with a random password when the file has no users.
/// The password goes to `<data_dir>/initial-admin-password` (0600). Returns it when created.
pub fn ensure_first_admin(data_dir: &Path) -> Result<Option<String>, UserError> {
    let path = users_path(data_dir);
    let mut file = UsersFile::load(&path)?;
    if !file.users.is_empty() {
        return Ok(None);
    }
    let password = random_password();
    file.add("admin", &password)?;
    let pw_path = data_dir.join(INITIAL_PASSWORD_FILE);
    let _ = std::fs::remove_file(&pw_path);
    crate::tls::write_file(&pw_path, format!("{password}\n").as_bytes(), 0o600).map_err(|e| {
        UserError::Write {
            path: pw_path.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    file.save(&path)?;
    Ok(Some(password))
}

/// The server's view of the users file: re-read when its modification time changes.
pub struct UserStore {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, UsersFile)>,
}

impl UserStore {
    pub fn new(data_dir: &Path) -> UserStore {
        UserStore {
            path: users_path(data_dir),
            cached: Mutex::new((None, UsersFile::default())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current users (re-read if the file changed since the last call).
    pub fn current(&self) -> Result<UsersFile, UserError> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if mtime.is_none() || cached.0 != mtime {
            cached.1 = UsersFile::load(&self.path)?;
            cached.0 = mtime;
        }
        Ok(cached.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_change_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(dir.path());
        let mut f = UsersFile::load(&path).unwrap();
        assert!(f.users.is_empty());
        f.add("alice", "correct horse battery").unwrap();
        assert!(matches!(
            f.add("alice", "another long one"),
            Err(UserError::Exists(_))
        ));
        assert!(matches!(
            f.add("bad name", "long enough pw"),
            Err(UserError::BadName(_))
        ));
        assert!(matches!(
            f.add("bob", "short"),
            Err(UserError::WeakPassword)
        ));
        f.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut f = UsersFile::load(&path).unwrap();
        assert!(f.users[0].hash.starts_with("$argon2id$"));
        assert!(f.verify("alice", "correct horse battery"));
        assert!(!f.verify("alice", "correct horse batterY"));
        assert!(!f.verify("nobody", "correct horse battery"));
        f.set_password("alice", "a new long password").unwrap();
        assert!(f.verify("alice", "a new long password"));
        assert!(!f.verify("alice", "correct horse battery"));
        f.remove("alice").unwrap();
        assert!(matches!(f.remove("alice"), Err(UserError::NoSuchUser(_))));
    }

    #[test]
    fn first_admin_is_created_once_and_store_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let pw = ensure_first_admin(dir.path()).unwrap().expect("created");
        assert_eq!(pw.len(), 20);
        let written = std::fs::read_to_string(dir.path().join(INITIAL_PASSWORD_FILE)).unwrap();
        assert_eq!(written.trim(), pw);
        assert_eq!(ensure_first_admin(dir.path()).unwrap(), None);
        let store = UserStore::new(dir.path());
        assert!(store.current().unwrap().verify("admin", &pw));
        let mut f = UsersFile::load(store.path()).unwrap();
        f.add("carol", "carol's long password").unwrap();
        // a later modification time, as a real edit would have
        std::thread::sleep(std::time::Duration::from_millis(20));
        f.save(store.path()).unwrap();
        assert!(store.current().unwrap().find("carol").is_some());
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(users_path(dir.path()), b"{nope").unwrap();
        let e = UsersFile::load(&users_path(dir.path())).unwrap_err();
        assert!(
            e.to_string().contains("not a valid admin users file"),
            "{e}"
        );
    }
}
