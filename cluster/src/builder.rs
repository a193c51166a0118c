//! Options for a dedicated cluster, and the start sequence shared by primaries and standbys.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use super::account::{self, Account};
use super::bins;
use super::dirs::{self, ClusterDir};
use super::{Cluster, Endpoint, Error, Result, SUPERUSER, conf, port, server, standby, template};

/// Linux's limit on a unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Starts that lose a port race to another process are retried this often.
const PORT_ATTEMPTS: usize = 5;

/// Options for [`Cluster::builder`]. Everything not set here has the defaults in the module docs.
#[derive(Clone, Debug, Default)]
pub struct ClusterBuilder {
    settings: Vec<(String, String)>,
    hba_lines: Vec<String>,
    listen_tcp: bool,
    tls: Option<(PathBuf, PathBuf)>,
    auth_method: Option<String>,
    password: Option<String>,
    bin_dir: Option<PathBuf>,
}

/// Where a new cluster's data directory comes from.
pub(crate) enum Origin<'a> {
    /// A copy of the initdb template: a fresh primary.
    Template,
    /// A base backup of a running primary, streaming from it through `slot`.
    Standby { primary: &'a Cluster, slot: String },
}

impl ClusterBuilder {
    /// A `postgresql.conf` setting, overriding the default of the same name.
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// A `pg_hba.conf` line, placed before the defaults so it wins (first match decides).
    pub fn hba_line(mut self, line: impl Into<String>) -> Self {
        self.hba_lines.push(line.into());
        self
    }

    /// Also listen on 127.0.0.1 (at the cluster's port). The unix socket is always there.
    pub fn listen_tcp(mut self, on: bool) -> Self {
        self.listen_tcp = on;
        self
    }

    /// Copy a PEM certificate and key into the data directory and set `ssl = on`.
    pub fn tls(mut self, cert_pem: impl Into<PathBuf>, key_pem: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The method of the default pg_hba lines (local and loopback, incl. replication):
    /// "trust" (the default), "scram-sha-256", "md5", "password". Anything but trust needs
    /// [`password`](Self::password).
    pub fn auth_method(mut self, method: impl Into<String>) -> Self {
        self.auth_method = Some(method.into());
        self
    }

    /// The superuser's password. Stored with the cluster's `password_encryption`, so
    /// `.setting("password_encryption", "md5")` gives an md5 hash. Every conninfo carries it.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Use the binaries in `dir` instead of `PG_BIN` or discovery.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Start the cluster: find binaries, copy the template, configure, start the postmaster.
    pub fn start(self) -> Result<Cluster> {
        self.launch(Origin::Template)
    }

    fn auth(&self) -> Result<&str> {
        let method = self.auth_method.as_deref().unwrap_or("trust");
        if !matches!(method, "trust" | "reject" | "peer") && self.password.is_none() {
            return Err(Error::Config(format!(
                "auth method {method} needs a password: call .password(..) too"
            )));
        }
        Ok(method)
    }

    pub(crate) fn launch(self, origin: Origin<'_>) -> Result<Cluster> {
        let started = Instant::now();
        let auth = self.auth()?.to_owned();
        let bins = bins::resolve(self.bin_dir.as_deref())?;
        let account = account::detect()?;
        let base =
            dirs::base().map_err(|e| Error::io("create the walshift-pg base directory", e))?;
        dirs::sweep(&base);
        let mut pending = Pending::claim(&base)?;
        let dir = pending.dir();
        let socket_dir = dir.path.join("sock");
        check_socket_path(&socket_dir)?;
        account::chown(&dir.path, account.as_ref())
            .map_err(|e| Error::io(format!("chown {}", dir.path.display()), e))?;
        account::create_dir(&socket_dir, 0o755, account.as_ref())
            .map_err(|e| Error::io(format!("create {}", socket_dir.display()), e))?;

        let role_settings =
            self.fill_data_dir(&origin, &base, &bins, account.as_ref(), &pending)?;
        let hba = conf::render_hba(&self.hba_lines, &auth);
        write_file(
            &pending.data_dir.join("pg_hba.conf"),
            &hba,
            account.as_ref(),
        )?;

        let mut endpoint = Endpoint {
            socket_dir,
            port: 0,
            tcp: self.listen_tcp,
            user: SUPERUSER.to_owned(),
            password: self.password.clone(),
        };
        let postmaster = self.start_postmaster(
            &origin,
            &bins,
            account.as_ref(),
            &pending,
            &mut endpoint,
            &role_settings,
        )?;
        pending.postmaster = Some(postmaster);

        let version_num = version_num(&endpoint)?;
        let startup_time = started.elapsed();
        tracing::info!(
            cluster = %pending.dir().name,
            version_num,
            startup_ms = startup_time.as_millis() as u64,
            "started throwaway PostgreSQL"
        );
        let standby_of = match origin {
            Origin::Template => None,
            Origin::Standby { primary, slot } => Some((primary.endpoint.clone(), slot)),
        };
        Ok(Cluster {
            data_dir: pending.data_dir.clone(),
            log_file: pending.log_file.clone(),
            logs_dir: pending.logs_dir.clone(),
            dir: pending.defuse(),
            endpoint,
            bins,
            account,
            options: self,
            version_num,
            startup_time,
            next_db: AtomicU32::new(0),
            state: Mutex::new(server::State {
                postmaster: pending.postmaster.take(),
                removed: false,
            }),
            standby_of,
        })
    }

    /// The data directory from `origin` (a template copy or a base backup), with the TLS files
    /// if any; the settings that go with it (a standby's, TLS's).
    fn fill_data_dir(
        &self,
        origin: &Origin<'_>,
        base: &dirs::Base,
        bins: &bins::Bins,
        account: Option<&Account>,
        pending: &Pending,
    ) -> Result<Vec<(String, String)>> {
        let mut role_settings = Vec::new();
        match origin {
            Origin::Template => {
                let template = template::ensure(base, bins, account)?;
                account::copy_tree(&template, &pending.data_dir, account, &|_| false, false)
                    .map_err(|e| {
                        Error::io(
                            format!(
                                "copy template {} to {}",
                                template.display(),
                                pending.data_dir.display()
                            ),
                            e,
                        )
                    })?;
            }
            Origin::Standby { primary, slot } => {
                standby::base_backup(primary, slot, &pending.data_dir, account)?;
                role_settings = standby::settings(primary, slot, &pending.dir().name);
            }
        }
        if let Some((cert, key)) = &self.tls {
            install_tls(&pending.data_dir, cert, key, account)?;
            role_settings.extend(
                [
                    ("ssl", "on"),
                    ("ssl_cert_file", "server.crt"),
                    ("ssl_key_file", "server.key"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            );
        }
        Ok(role_settings)
    }

    /// Writes walshift.conf for a free port and starts the postmaster; a start that loses the
    /// port to another process is tried again on another port, up to [`PORT_ATTEMPTS`] times.
    /// `endpoint.port` is the port it listens on.
    fn start_postmaster(
        &self,
        origin: &Origin<'_>,
        bins: &bins::Bins,
        account: Option<&Account>,
        pending: &Pending,
        endpoint: &mut Endpoint,
        role_settings: &[(String, String)],
    ) -> Result<Child> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            endpoint.port = port::pick_free_port().map_err(|e| Error::io("pick a port", e))?;
            let mut settings = conf::default_settings(
                endpoint.port,
                &endpoint.socket_dir,
                self.listen_tcp,
                &pending.dir().name,
            );
            settings.extend(role_settings.iter().cloned());
            let settings = conf::merge_settings(settings, &self.settings);
            write_file(
                &pending.data_dir.join("walshift.conf"),
                &conf::render_conf(&settings),
                account,
            )?;
            if attempt == 1 && matches!(origin, Origin::Template) {
                if let Some(password) = &self.password {
                    server::set_password(bins, account, &pending.data_dir, password)?;
                }
            }
            match server::spawn_postmaster(bins, account, &pending.data_dir, &pending.log_file) {
                Ok(child) => return Ok(child),
                Err(reason) => {
                    let tail = dirs::log_tail(&pending.log_file, 40);
                    let lost_port_race = self.listen_tcp
                        && (tail.contains("could not bind")
                            || tail.contains("Address already in use"));
                    if lost_port_race && attempt < PORT_ATTEMPTS {
                        continue;
                    }
                    // The directory goes when `pending` drops; the log is copied out first.
                    return Err(Error::Startup {
                        reason,
                        log: pending.kept_log.clone(),
                        tail,
                    });
                }
            }
        }
    }
}

/// The running server's `server_version_num`.
fn version_num(endpoint: &Endpoint) -> Result<u32> {
    let version = server::query(endpoint, "postgres", "SHOW server_version_num")?;
    version
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Config(format!("unexpected server_version_num reply {version:?}")))
}

/// A cluster directory being set up. Until [`Pending::defuse`] hands it to a [`Cluster`], a
/// failure (an early return) stops whatever server started, keeps the log and removes it all.
struct Pending {
    dir: Option<ClusterDir>,
    postmaster: Option<Child>,
    data_dir: PathBuf,
    log_file: PathBuf,
    kept_log: PathBuf,
    logs_dir: PathBuf,
}

impl Pending {
    /// A new cluster directory in `base`.
    fn claim(base: &dirs::Base) -> Result<Pending> {
        let claimed = dirs::claim(&base.clusters).map_err(|e| {
            Error::io(
                format!("create a cluster directory in {}", base.clusters.display()),
                e,
            )
        })?;
        Ok(Pending {
            data_dir: claimed.path.join("data"),
            log_file: claimed.path.join("postgres.log"),
            kept_log: base.logs.join(format!("{}.log", claimed.name)),
            logs_dir: base.logs.clone(),
            dir: Some(claimed),
            postmaster: None,
        })
    }

    fn dir(&self) -> &ClusterDir {
        self.dir
            .as_ref()
            .expect("a pending cluster directory until defused")
    }

    fn defuse(&mut self) -> ClusterDir {
        self.dir.take().expect("defused once")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if let Some(mut child) = self.postmaster.take() {
                server::stop_child(&mut child, server::StopMode::Immediate);
            }
            dirs::stop_postmaster(&self.data_dir);
            if self.log_file.exists() {
                let _ = fs::copy(&self.log_file, &self.kept_log);
            }
            let _ = fs::remove_dir_all(&dir.path);
        }
    }
}

fn check_socket_path(socket_dir: &Path) -> Result<()> {
    // ".s.PGSQL." plus up to five port digits.
    let len = socket_dir.as_os_str().len() + "/.s.PGSQL.65535".len();
    if len > MAX_SOCKET_PATH {
        return Err(Error::Config(format!(
            "the socket path under {} would be {len} bytes, over the {MAX_SOCKET_PATH}-byte limit \
             of unix sockets; set TMPDIR to a shorter directory",
            socket_dir.display()
        )));
    }
    Ok(())
}

fn install_tls(data_dir: &Path, cert: &Path, key: &Path, account: Option<&Account>) -> Result<()> {
    for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
        let to = data_dir.join(name);
        fs::copy(from, &to)
            .map_err(|e| Error::io(format!("copy {} to {}", from.display(), to.display()), e))?;
        // The server refuses a key readable by group or others.
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600))
            .and_then(|()| account::chown(&to, account))
            .map_err(|e| Error::io(format!("secure {}", to.display()), e))?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, account: Option<&Account>) -> Result<()> {
    fs::write(path, text)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o600)))
        .and_then(|()| account::chown(path, account))
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_methods_need_a_password() {
        let err = ClusterBuilder::default()
            .auth_method("scram-sha-256")
            .auth()
            .unwrap_err();
        assert!(err.to_string().contains("needs a password"), "{err}");
        let ok = ClusterBuilder::default().auth_method("md5").password("pw");
        assert_eq!(ok.auth().unwrap(), "md5");
        assert_eq!(ClusterBuilder::default().auth().unwrap(), "trust");
    }

    #[test]
    fn overlong_socket_paths_are_refused_with_a_hint() {
        assert!(check_socket_path(Path::new("/tmp/walshift-pg-0/clusters/c1-0/sock")).is_ok());
        let long = PathBuf::from(format!("/tmp/{}/sock", "x".repeat(100)));
        let err = check_socket_path(&long).unwrap_err().to_string();
        assert!(err.contains("TMPDIR"), "{err}");
    }
}
